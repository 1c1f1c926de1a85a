"""The content-addressed file store's writes (gateway/blobs.py): atomic, named by hash, a put
of what is there already only freshens it."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from gateway import blobs
from gateway.blobs import BlobStore
from gateway.errors import StorageUnavailable


async def test_a_put_is_stored_under_its_hash_with_nothing_else_left(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"a document" * 1000
    sha = await store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.path(sha).read_bytes() == data
    assert await store.get(sha) == data
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert files == [store.path(sha)]  # no temporary file left beside it
    assert oct(store.path(sha).stat().st_mode & 0o777) == oct(0o600)


async def test_a_put_again_freshens_the_file_and_does_not_write_it(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = await store.put(b"same")
    old = time.time() - 3600
    os.utime(store.path(sha), (old, old))
    assert await store.put_many([b"same", b"other"]) == [sha, hashlib.sha256(b"other").hexdigest()]
    assert store.path(sha).stat().st_mtime > old + 1800
    assert not store.remove_if_older(sha, old + 1)


async def test_a_temporary_name_an_earlier_process_left_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"fresh"
    sha = hashlib.sha256(data).hexdigest()
    folder = tmp_path / "blobs" / sha[:2]
    folder.mkdir(parents=True)
    serial = iter(range(5))
    monkeypatch.setattr(blobs, "_SERIAL", serial)
    left = folder / f".tmp-{os.getpid()}-0"
    left.write_bytes(b"a crashed process's half-written file")
    assert await store.put(data) == sha
    assert store.path(sha).read_bytes() == data
    assert left.read_bytes() == b"a crashed process's half-written file"  # not overwritten
    assert not (folder / f".tmp-{os.getpid()}-1").exists()  # renamed into place


async def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")

    def broken(fd: int, data: object) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("gateway.blobs.os.write", broken)
    with pytest.raises(StorageUnavailable):
        await store.put(b"lost")
    monkeypatch.undo()
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
