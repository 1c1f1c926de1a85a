"""How to reach the applicant, handed to the ``status_changed`` hook beside the change.

The phone number is a :class:`pydantic.SecretStr`: it prints as ``**********`` in logs, reprs and
tracebacks, so a notifier has to ask for it on purpose (``contact.phone.get_secret_value()``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gateway.events import StatusChange, trusted
from gateway.pii import mask_phone


class Contact(BaseModel):
    """The applicant's contact details for one case (PII: keep it out of logs)."""

    model_config = ConfigDict(frozen=True)

    name: SecretStr
    phone: SecretStr | None = None

    @property
    def masked_phone(self) -> str | None:
        """The phone as it may be shown or logged (``138****8000``)."""
        return mask_phone(self.phone.get_secret_value()) if self.phone else None

    @classmethod
    def from_applicant(cls, applicant: dict[str, Any]) -> Contact:
        phone = applicant.get("phone")
        return cls(
            name=SecretStr(str(applicant.get("name", ""))),
            phone=SecretStr(phone) if phone else None,
        )


class NotifiedChange(StatusChange):
    """A change carrying its case's contact through the core to :func:`gateway.updates.announce`
    (never serialised: the contact is excluded from dumps)."""

    contact: Contact | None = Field(default=None, exclude=True, repr=False)


def with_contact(change: StatusChange, applicant: dict[str, Any] | None) -> StatusChange:
    [made] = with_contacts([change], applicant)
    return made


def with_contacts(
    changes: list[StatusChange], applicant: dict[str, Any] | None
) -> list[StatusChange]:
    """:func:`with_contact` for several changes of one case (one contact for all)."""
    if applicant is None or not changes:
        return changes
    contact = Contact.from_applicant(applicant)  # frozen: the case's changes share it
    out: list[StatusChange] = []
    for change in changes:
        # the change's values were validated when it was made: no second validation; they
        # are its __dict__ (StatusChange keeps no extras), copied without BaseModel.__iter__
        values = dict(change.__dict__)
        values["contact"] = contact
        out.append(trusted(NotifiedChange, values))
    return out


def split(change: StatusChange) -> tuple[StatusChange, Contact | None]:
    """The plain change (what plugins see as ``change``) and the contact, if known."""
    if isinstance(change, NotifiedChange):
        plain = dict(change.__dict__)
        del plain["contact"]
        return trusted(StatusChange, plain), change.contact
    return change, None
