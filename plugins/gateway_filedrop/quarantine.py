"""The quarantine folder as ops see it: what is held and why, and putting a file back.

Used by the connector's health (how many files wait) and by ``gateway filedrop quarantine``
and ``gateway filedrop requeue`` (see :mod:`gateway_filedrop.cli`). Nothing is deleted: a
requeued file goes back to the outbox to be read again, its reason note to the archive.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.errors import TransientError
from gateway_filedrop.ledger import iso
from gateway_filedrop.options import FolderOptions
from gateway_filedrop.storage import Storage

__all__ = ["Held", "held", "note", "requeue"]

_NOTE_BYTES = 4096


@dataclass(frozen=True)
class Held:
    """One quarantined file: its name, size, and the reason noted when it was moved."""

    name: str
    size: int
    kind: str
    reason: str
    noted_at: str


def _is_note(name: str, done_suffix: str) -> bool:
    return name.endswith((".reason", done_suffix)) or name.startswith(".")


async def held(
    storage: Storage, folders: FolderOptions, done_suffix: str, *, reasons: bool = True
) -> list[Held]:
    """The files in quarantine, oldest first (``reasons``: read each one's note)."""
    try:
        entries = await storage.listdir(folders.quarantine)
    except TransientError:
        return []  # not made yet: nothing held
    out = []
    for entry in sorted(entries, key=lambda e: (e.mtime, e.name)):
        if entry.is_dir or _is_note(entry.name, done_suffix):
            continue
        noted_at, reason = "", ""
        if reasons:
            noted_at, reason = await _note(storage, f"{folders.quarantine}/{entry.name}.reason")
        out.append(Held(entry.name, entry.size, entry.kind, reason, noted_at))
    return out


async def note(
    storage: Storage, folders: FolderOptions, moved: str, name: str, reason: str
) -> None:
    """Write why ``name`` (held as ``moved``) is in quarantine: ``<moved>.reason``."""
    text = f"{iso(dt.datetime.now(dt.UTC))} {name}: {reason}\n"
    await storage.write(f"{folders.quarantine}/{moved}.reason", text.encode(), atomic=True)


async def _note(storage: Storage, path: str) -> tuple[str, str]:
    try:
        text = (await storage.read(path, _NOTE_BYTES)).decode("utf-8", "replace").strip()
    except Exception:  # a missing or odd note must not hide the file it is about
        return "", "(no reason noted)"
    stamp, _, rest = text.partition(" ")
    return stamp, rest.partition(": ")[2] or rest


async def requeue(storage: Storage, folders: FolderOptions, name: str, done_suffix: str) -> str:
    """Put a quarantined file (with its done marker and ``.files`` folder) back into the
    outbox to be read again; its note goes to the archive. Returns what was done."""
    if not name or "/" in name or name.startswith(".") or _is_note(name, done_suffix):
        raise ValueError(f"{name!r} is not a quarantined result file name")
    src, dst = folders.quarantine, folders.outbox
    if await storage.exists(f"{dst}/{name}"):
        raise ValueError(f"the outbox already holds a file named {name!r}")
    if not await storage.move(f"{src}/{name}", f"{dst}/{name}"):
        raise ValueError(f"no file {name!r} in quarantine")
    stem = name.rpartition(".")[0] or name
    await storage.move(f"{src}/{name}{done_suffix}", f"{dst}/{name}{done_suffix}")
    await storage.move(f"{src}/{stem}.files", f"{dst}/{stem}.files")
    n, note = 0, f"{name}.reason"
    while await storage.exists(f"{folders.archive}/{note}"):
        n += 1
        note = f"{name}.reason.{n}"
    await storage.move(f"{src}/{name}.reason", f"{folders.archive}/{note}")
    return f"{name} is back in {dst}/ (its note is in {folders.archive}/{note})"
