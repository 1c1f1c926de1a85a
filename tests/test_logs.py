"""Logging setup: lines go to the stderr of the moment they are written."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from gateway import logs


def test_a_line_after_the_configuring_stream_was_closed_goes_to_the_current_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = structlog.get_config()
    monkeypatch.setattr(logs, "_configured", logs._configured)
    try:
        # a CLI test harness swaps stderr, the command configures logging, the harness closes it
        configuring = io.StringIO()
        monkeypatch.setattr(sys, "stderr", configuring)
        logs.configure("INFO")
        configuring.close()
        now = io.StringIO()
        monkeypatch.setattr(sys, "stderr", now)
        structlog.get_logger("probe").warning("still here", department="amr")
    finally:
        structlog.configure(**before)
    assert "still here" in now.getvalue() and "department=amr" in now.getvalue()
