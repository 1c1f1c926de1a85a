"""``POST /v1/applications/{id}/supplements``: hand in what the department asked for (补正)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway import supplements
from gateway.api.auth import ClientDep, RuntimeDep
from gateway.updates import announce

router = APIRouter(prefix="/v1")


@router.post(
    "/applications/{app_id}/supplements",
    status_code=201,
    response_model=supplements.SupplementAccepted,
    tags=["applications"],
)
async def add_supplement(
    app_id: str,
    body: supplements.SupplementIn,
    runtime: RuntimeDep,
    client: ClientDep,
    response: Response,
) -> supplements.SupplementAccepted:
    """Add materials (uploaded first with ``POST /v1/materials``) to a case the department sent
    back with ``supplement_required``; the case is re-sent as the next version. Sending the same
    request again answers 200 with the same body."""
    done = await supplements.submit(runtime, client, app_id, body)
    announce(runtime, done.changes)
    if done.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return done.accepted
