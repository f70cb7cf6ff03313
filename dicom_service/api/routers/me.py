"""Who the token in use belongs to: the correction page shows it, so a dentist sees under
whose name their corrections go."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from dicom_service.api.auth import UNAUTHENTICATED, CurrentCaller

router = APIRouter(tags=["session"])


class MeOut(BaseModel):
    """The holder of the request's token."""

    kind: Literal["user", "service", "disabled"] = Field(description=(
        "user: a named person (http.users); service: a service token (http.tokens), whose corrections are not "
        "attributed to anyone; disabled: authentication is off (development)."))
    name: str | None = Field(description="The person's name as DICOM writes it (Family^Given^...), or null.")
    role: Literal["dentist", "admin", "service", "disabled"] = Field(description=(
        "dentist: everything but removing studies and reading the audit trail; the others: everything."))


@router.get("/me", response_model=MeOut, summary="The holder of the token in use")
def me(caller: CurrentCaller) -> MeOut:
    if caller.name is not None:
        return MeOut(kind="user", name=caller.name, role=caller.role)
    kind = "disabled" if caller is UNAUTHENTICATED else "service"
    return MeOut(kind=kind, name=None, role=kind)
