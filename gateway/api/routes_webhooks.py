"""Status subscriptions (``/v1/webhooks``): a front-desk system is told of its cases' events
instead of polling (see :mod:`gateway.webhooks`); ops see every subscription's delivery state."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from gateway import webhooks
from gateway.api.auth import ClientDep, OpsDep, RuntimeDep
from gateway.api.paging import Page, PageDep, PageQuery
from gateway.runtime import Runtime
from gateway.store.clients import Client

router = APIRouter(prefix="/v1")


class SubscriptionPage(Page[webhooks.SubscriptionOut]):
    pass


class DeliveryPage(Page[webhooks.DeliveryOut]):
    pass


@router.post(
    "/webhooks", status_code=201, response_model=webhooks.SubscriptionOut, tags=["webhooks"]
)
async def subscribe(
    body: webhooks.SubscriptionIn, runtime: RuntimeDep, client: ClientDep
) -> webhooks.SubscriptionOut:
    """Register a URL to be POSTed every event of this centre's cases (``scope`` centre) or of
    the cases this key submits (``scope`` key). The answer holds the signing ``secret``: it is
    shown only here."""
    return await webhooks.subscribe(runtime, client, body)


async def _page(runtime: Runtime, client: Client, paging: PageQuery) -> SubscriptionPage:
    found = await webhooks.subscriptions(
        runtime, client, limit=paging.limit + 1, after=paging.key("webhooks", 2)
    )
    cut = paging.page("webhooks", found, lambda s: [s.created_at, s.id])
    return SubscriptionPage(items=cut.items, next_cursor=cut.next_cursor)


@router.get("/webhooks", response_model=SubscriptionPage, tags=["webhooks"])
async def list_subscriptions(
    runtime: RuntimeDep, client: ClientDep, paging: PageDep
) -> SubscriptionPage:
    """This centre's subscriptions with their delivery state, oldest first."""
    return await _page(runtime, client, paging)


@router.get("/webhooks/{sub_id}", response_model=webhooks.SubscriptionOut, tags=["webhooks"])
async def get_subscription(
    sub_id: str, runtime: RuntimeDep, client: ClientDep
) -> webhooks.SubscriptionOut:
    return await webhooks.get(runtime, client, sub_id)


@router.delete("/webhooks/{sub_id}", response_model=webhooks.SubscriptionOut, tags=["webhooks"])
async def delete_subscription(
    sub_id: str, runtime: RuntimeDep, client: ClientDep
) -> webhooks.SubscriptionOut:
    """Stop the subscription: nothing more is queued or sent. Repeating is harmless."""
    return await webhooks.disable(runtime, client, sub_id)


@router.post(
    "/webhooks/{sub_id}/replay",
    status_code=202,
    response_model=webhooks.ReplayOut,
    tags=["webhooks"],
)
async def replay(
    sub_id: str, body: webhooks.ReplayIn, runtime: RuntimeDep, client: ClientDep
) -> webhooks.ReplayOut:
    """Send the events ``from_event`` to ``to_event`` (event ids, inclusive) again, in order
    per case, including events from before the subscription existed."""
    return webhooks.ReplayOut(queued=await webhooks.replay(runtime, client, sub_id, body))


@router.get("/webhooks/{sub_id}/deliveries", response_model=DeliveryPage, tags=["webhooks"])
async def list_deliveries(
    sub_id: str,
    runtime: RuntimeDep,
    client: ClientDep,
    paging: PageDep,
    state: Annotated[Literal["pending", "delivered"] | None, Query()] = None,
) -> DeliveryPage:
    """The subscription's deliveries in event order (``state=pending``: still to be sent)."""
    start = paging.key("deliveries", 1)
    found = await webhooks.deliveries(
        runtime,
        client,
        sub_id,
        state=state,
        limit=paging.limit + 1,
        after=start[0] if start else None,
    )
    cut = paging.page("deliveries", found, lambda d: [d.event_id])
    return DeliveryPage(items=cut.items, next_cursor=cut.next_cursor)


@router.get("/ops/webhooks", response_model=SubscriptionPage, tags=["ops"])
async def ops_subscriptions(runtime: RuntimeDep, ops: OpsDep, paging: PageDep) -> SubscriptionPage:
    """Every centre's subscriptions with their delivery state (pending, oldest waiting, last
    error), oldest first."""
    return await _page(runtime, ops, paging)
