"""The built-in ``manual`` delivery method, a plugin like any other: the clerk posts the parcel
at the counter and types in the tracking number. Registered ``trylast`` (see
``gateway.plugin_manager.BUILTIN``), so a plugin's method of the same hook comes first."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from gateway.delivery import DeliveryMethod, DeliveryRefused, Parcel, Shipment
from gateway.hookspecs import hookimpl


class ManualMail(DeliveryMethod):
    """The clerk posts the parcel at the counter and types in the tracking number."""

    name: ClassVar[str] = "manual"
    description: ClassVar[str] = (
        "posted by the centre; the clerk enters carrier and tracking number"
    )

    async def ship(self, parcel: Parcel) -> Shipment:
        if not parcel.tracking_number:
            raise DeliveryRefused(
                "tracking_number is required when the centre posts the parcel itself "
                "(method 'manual')",
                "tracking_number",
            )
        return Shipment(carrier=parcel.carrier or "EMS", tracking_number=parcel.tracking_number)


@hookimpl(trylast=True)
def register_delivery_methods(register: Callable[[DeliveryMethod], None]) -> None:
    register(ManualMail())


__all__ = ["ManualMail", "register_delivery_methods"]
