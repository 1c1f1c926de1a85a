"""Hook specifications: the plugin API's reference documentation.

Plugins implement these with ``@gateway.hookimpl`` and register through the ``gateway``
entry-point group (the built-in connectors do exactly that). The core calls each plugin inside
its own error boundary: one plugin's failure is logged with its name and never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from gateway.config.models import DepartmentConfig, Matter
    from gateway.connector import Applicant, Connector, Envelope
    from gateway.delivery import DeliveryMethod
    from gateway.events import StatusChange
    from gateway.notifications import Contact

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


@hookspec
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    """Register connector classes by calling ``register(ConnectorClass)`` once per class.

    :param register: takes a :class:`gateway.connector.Connector` subclass. Its ``kind`` is the
        value departments put in ``connector = "..."``; a kind registered twice is a startup error
        naming both plugins.

    Example::

        @hookimpl
        def register_connectors(register):
            register(MyConnector)
    """


@hookspec(firstresult=True)
def map_payload(envelope: Envelope, department: DepartmentConfig) -> dict[str, Any] | None:
    """Build the payload a department receives for ``envelope``, replacing declarative mapping.

    :param envelope: the application version being delivered.
    :param department: the department's validated config.
    :return: the payload, or None to leave it to the connector's declarative mapping.

    Stops at the first non-None result. Connectors that build payloads (such as ``rest``) ask this
    hook first.
    """


@hookspec
def validate_application(
    form: dict[str, Any],
    matter: Matter,
    region: str,
    applicant: Applicant,
    department: DepartmentConfig,
) -> list[str] | None:
    """Check an application at intake, beyond the matter's JSON Schema.

    :param form: the application's form fields as submitted.
    :param matter: the catalog entry applied for.
    :param region: the 6-digit division code the application is for.
    :param applicant: who applies (:class:`gateway.connector.Applicant`; ``id_number`` and
        ``phone`` are PII: never put them in a message).
    :param department: the department the application goes to (its connector and options),
        e.g. to check that its systems can carry the text.
    :return: problems as messages a clerk can act on ("form.area: must be positive"), or None.

    An implementation may take any of these arguments by name. Any problem from any plugin
    rejects the application with 422; nothing is stored. A message starting with a form or
    applicant path (``form.area``, ``applicant.name``) and ": " becomes an ``errors[]`` item
    for that field (code ``form_rejected``, the rest of the message as written); any other
    names the whole ``form``.
    """


@hookspec
def status_changed(change: StatusChange, contact: Contact | None) -> None:
    """Be told after a case's status change is committed (for SMS, e-mail, dashboards).

    :param change: the committed change. Applicant PII is not included.
    :param contact: how to reach the applicant (:class:`gateway.notifications.Contact`), or None
        where the core does not have it at hand (e.g. an operator retry). Its ``name`` and
        ``phone`` are ``SecretStr`` (masked when printed); use ``contact.masked_phone`` for
        anything written to a log or file, ``contact.phone.get_secret_value()`` only to send.

    An implementation may take just ``change``. Called once per committed change, after commit;
    a failing implementation is logged and never affects the case or the other implementations.
    """


@hookspec
def register_delivery_methods(register: Callable[[DeliveryMethod], None]) -> None:
    """Register ways of mailing results by calling ``register(method)`` once per method.

    :param register: takes a :class:`gateway.delivery.DeliveryMethod` instance. Its ``name`` is
        what the front desk sends as ``method`` to ``POST /v1/applications/{id}/mail``; a name
        registered twice is a startup error naming both plugins. The built-in ``manual`` method
        (the clerk types in the tracking number) is registered ``trylast``.

    ``ship(parcel)`` returns a :class:`gateway.delivery.Shipment` (carrier, tracking number) and
    MUST be idempotent on ``parcel.application_id``. Raise
    :class:`gateway.delivery.DeliveryRefused` for a problem the clerk can fix.

    Example::

        @hookimpl
        def register_delivery_methods(register):
            register(MyCourier())
    """


@hookspec
def register_commands(cli: typer.Typer) -> None:
    """Add commands to the ``gateway`` command line.

    :param cli: the root typer app; call ``cli.command()(fn)`` or ``cli.add_typer(...)``.
    """
