"""A connector that answers from a function, as small as ``httpx.MockTransport``.

    def handler(envelope: Envelope) -> Receipt:
        if envelope.form.get("area", 0) > 1000:
            raise DepartmentRejected("too large")
        return Receipt(case_id=f"C-{envelope.application_id}", status="1")

    connector = FakeConnector(handler)

The handler may be sync or async and may raise any :mod:`gateway.errors` class. Every envelope
is recorded in ``submitted``; :meth:`FakeConnector.idempotent` is the common handler that keeps
one case per idempotency key, as a real department must.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Awaitable, Callable
from typing import ClassVar

import httpx
from pydantic import BaseModel, ConfigDict

from gateway.connector import Connector, ConnectorContext, Envelope, MaterialRef, Receipt

Handler = Callable[[Envelope], "Receipt | Awaitable[Receipt]"]


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FakeConnector(Connector):
    """``submit`` calls ``handler(envelope)``; ``submitted`` records every envelope."""

    kind: ClassVar[str] = "fake"
    Options: ClassVar[type[BaseModel]] = FakeOptions

    def __init__(self, handler: Handler, context: ConnectorContext | None = None) -> None:
        super().__init__(context or _offline_context())
        self.handler = handler
        self.submitted: list[Envelope] = []

    async def submit(self, envelope: Envelope) -> Receipt:
        self.submitted.append(envelope)
        result = self.handler(envelope)
        return await result if inspect.isawaitable(result) else result

    @classmethod
    def idempotent(cls, status: str | None = None, prefix: str = "FAKE") -> FakeConnector:
        """A fake department keeping one case per idempotency key (``FAKE-1``, ``FAKE-2``...)."""
        cases: dict[str, str] = {}
        numbers = itertools.count(1)

        def handler(envelope: Envelope) -> Receipt:
            key = envelope.idempotency_key
            if key not in cases:
                cases[key] = f"{prefix}-{next(numbers)}"
            return Receipt(case_id=cases[key], status=status)

        return cls(handler)


def _offline_context() -> ConnectorContext:
    async def no_material(ref: MaterialRef) -> bytes:
        raise LookupError(f"no material {ref.id} in a FakeConnector")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("FakeConnector has no network", request=request)

    return ConnectorContext(
        department="fake",
        options=FakeOptions(),
        http=httpx.AsyncClient(transport=httpx.MockTransport(refuse)),
        read_material=no_material,
    )


__all__ = ["FakeConnector", "FakeOptions", "Handler"]
