"""A simulated land registry speaking the ``landreg`` line protocol on loopback.

    async with running_simulator() as registry:      # registry.port is the bound port
        registry.mode = "busy"                       # "ok" | "busy" (ERR 503) | "hang"

Cases start ``R`` (received); the first ``STATUS`` query decides them: ``G`` (granted), or
``D`` (denied) when the form says ``{"deny": true}``. A form with ``{"refuse": true}`` is
refused at ``SUBMIT`` with ``ERR 422``. Deterministic: no clocks, no randomness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Case:
    id: str
    key: str
    body: dict[str, object]
    status: str = "R"
    updated: float = field(default_factory=time.time)


@dataclass
class LandRegistry:
    port: int = 0
    mode: str = "ok"
    cases: dict[str, Case] = field(default_factory=dict)  # by idempotency key
    requests: int = 0

    def case(self, case_id: str) -> Case | None:
        return next((c for c in self.cases.values() if c.id == case_id), None)

    def answer(self, line: str) -> list[str]:
        verb, _, rest = line.partition(" ")
        if verb == "PING":
            return ["PONG"]
        if verb == "SUBMIT":
            key, _, raw = rest.partition(" ")
            try:
                body = json.loads(raw)
            except ValueError:
                return ["ERR 400 body is not JSON"]
            if key not in self.cases:
                if body.get("form", {}).get("refuse"):
                    return ["ERR 422 not-a-land-matter"]
                self.cases[key] = Case(f"LR{len(self.cases) + 1:05d}", key, body)
            case = self.cases[key]
            return [f"OK {case.id} {case.status}"]
        if verb == "STATUS":
            found = self.case(rest)
            if found is None:
                return [f"ERR 404 no case {rest}"]
            if found.status == "R":
                form = found.body.get("form")
                found.status = "D" if isinstance(form, dict) and form.get("deny") else "G"
                found.updated = time.time()
            opinion = "准予登记" if found.status == "G" else "不予登记"
            return [f"OK {found.id} {found.status} {opinion}"]
        if verb == "LIST":
            since, until = (float(x) for x in rest.split(" "))
            listed = [c for c in self.cases.values() if since <= c.updated < until]
            return [f"CASE {c.id} {c.key} {c.status} {c.updated:.3f}" for c in listed] + ["END"]
        return [f"ERR 400 unknown request {verb}"]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode().rstrip("\n")
            self.requests += 1
            if self.mode == "hang":
                await reader.read()  # never answer; return when the client gives up
                return
            lines = ["ERR 503 busy"] if self.mode == "busy" else self.answer(line)
            writer.write("".join(f"{out}\n" for out in lines).encode())
            await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def running_simulator(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[LandRegistry]:
    """Serve a fresh registry for the duration of the block."""
    registry = LandRegistry()
    server = await asyncio.start_server(registry.handle, host, port)
    registry.port = server.sockets[0].getsockname()[1]
    try:
        yield registry
    finally:
        server.close()
        await server.wait_closed()
