"""Delivery methods: how a result leaves the centre by post.

A delivery method is registered through the ``register_delivery_methods`` hook (the built-in
``manual`` method, :mod:`gateway.manual_mail`, is registered exactly like a plugin's courier).
``POST /v1/applications/{id}/mail`` names a method; the core builds a :class:`Parcel`, awaits
:meth:`DeliveryMethod.ship` and records the :class:`Shipment` it returns.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Parcel(BaseModel):
    """What is to be mailed. ``address`` and ``recipient`` are personal data: never log them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    application_id: str
    receipt_number: str
    centre: str
    recipient: str
    address: str
    documents: list[str] = Field(default_factory=list, description="document names")
    carrier: str | None = Field(default=None, description="as the clerk gave it, if any")
    tracking_number: str | None = Field(default=None, description="as the clerk gave it, if any")


class Shipment(BaseModel):
    """What the method reports back: who carries the parcel and its tracking number."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    carrier: str = Field(min_length=1, max_length=64)
    tracking_number: str = Field(min_length=1, max_length=64)


class DeliveryRefused(Exception):
    """The method cannot ship this parcel as asked; ``field`` names what the clerk must fix."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DeliveryMethod:
    """Base class of delivery methods.

    ``name`` is what the front desk sends as ``method``. :meth:`ship` MUST be idempotent on
    ``parcel.application_id``: a retried request must not book a second courier.
    Raise :class:`DeliveryRefused` for what the clerk can fix; anything else is reported as the
    method failing and nothing is recorded.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    async def ship(self, parcel: Parcel) -> Shipment:
        raise NotImplementedError


__all__ = [
    "DeliveryMethod",
    "DeliveryRefused",
    "Parcel",
    "Shipment",
]
