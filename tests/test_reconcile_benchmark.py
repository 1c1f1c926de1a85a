"""The reconciliation benchmark at a small N: the streaming merge (with spilled sort runs) and
the plain dict diff find the same classes. Figures for 1,000,000 cases: docs/performance.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gateway.reconcile import merge

ROOT = Path(__file__).resolve().parent.parent


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_reconcile", ROOT / "benchmarks/reconcile.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_stream_and_dict_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench()
    monkeypatch.setattr(merge, "CHUNK", 500)  # force several spilled runs
    monkeypatch.setattr(bench, "DRIFT_EVERY", 700)
    n = 3_000
    db = tmp_path / "gateway.db"
    bench.build(db, n)
    stream = bench.run_phase("stream", db, n)
    plain = bench.run_phase("dict", db, n)
    assert stream["classes"] == plain["classes"]
    assert stream["classes"]["department_behind"] == 5  # i % 700 == 1 for i < 3000
    assert stream["classes"]["missing_at_department"] == 5
    assert stream["classes"]["unknown_at_gateway"] == n // 700
    assert stream["classes"]["matched"] == n - 10
