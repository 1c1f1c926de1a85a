"""Example delivery method: a courier that books a pickup at the centre and returns its waybill.

Registered through the ``register_delivery_methods`` hook; the front desk selects it with
``{"method": "courier"}`` on ``POST /v1/applications/{id}/mail``. The waybill number is derived
from the application id, so booking twice (a retried request) gives the same waybill. If
``GATEWAY_COURIER_MANIFEST`` names a file, each booking is appended to it (JSON lines) as the
courier's pickup list would receive it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from gateway.delivery import DeliveryMethod, DeliveryRefused, Parcel, Shipment
from gateway.hookspecs import hookimpl
from gateway.pii import scrub

__all__ = ["ExampleCourier", "register_delivery_methods"]


class ExampleCourier(DeliveryMethod):
    name: ClassVar[str] = "courier"
    description: ClassVar[str] = "example courier: books a pickup at the centre, gives a waybill"
    carrier: ClassVar[str] = "示例速递"

    async def ship(self, parcel: Parcel) -> Shipment:
        if len(parcel.address.strip()) < 4:
            raise DeliveryRefused("the courier needs a full postal address", "address")
        digest = hashlib.sha256(f"courier:{parcel.application_id}".encode()).hexdigest()
        waybill = "SS" + str(int(digest[:15], 16))[:12].zfill(12)
        manifest = os.environ.get("GATEWAY_COURIER_MANIFEST")
        if manifest:
            path = Path(manifest)
            path.parent.mkdir(parents=True, exist_ok=True)
            entry = {
                "waybill": waybill,
                "receipt_number": parcel.receipt_number,
                "pickup_at": parcel.centre,
                "recipient": parcel.recipient,
                "address": scrub(parcel.address),
                "items": len(parcel.documents),
            }
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return Shipment(carrier=self.carrier, tracking_number=waybill)


@hookimpl
def register_delivery_methods(register: Callable[[DeliveryMethod], None]) -> None:
    register(ExampleCourier())
