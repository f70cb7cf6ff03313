"""DICOM UID validation and generation.

Every UID that arrives from the network or a file is checked with :func:`validate_uid`
before it is used anywhere, in particular before it becomes part of a file path.
"""

from __future__ import annotations

import re
import uuid

from dicom_service.domain import InvalidUIDError

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: Root for UIDs we create: the UUID-derived ``2.25`` arc needs no registration.
UUID_ROOT = "2.25."

_NAMESPACE = uuid.UUID("6f1c3a52-8e0b-4d7e-9a55-1d2b9c7e4f10")


def is_valid_uid(value: object) -> bool:
    """Return True if ``value`` is a syntactically valid DICOM UID (PS3.5 9.1)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID_RE.match(value) is not None


def validate_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUIDError`.

    Parameters
    ----------
    value : object
        Candidate UID (normally a ``str`` or pydicom ``UID``).
    what : str
        Name used in the error message (e.g. ``"SOPInstanceUID"``); the value itself
        is shown only as a length, because a bad value may contain anything.
    """
    text = str(value) if value is not None else ""
    if not is_valid_uid(text):
        raise InvalidUIDError(f"{what} is not a valid DICOM UID (length {len(text)})")
    return text


def new_uid(seed: str | None = None) -> str:
    """Create a new UID under the ``2.25`` root.

    Parameters
    ----------
    seed : str, optional
        If given, the UID is derived deterministically from it (same seed, same UID),
        which lets result objects keep stable UIDs when a job is retried.
    """
    value = uuid.uuid4() if seed is None else uuid.uuid5(_NAMESPACE, seed)
    return f"{UUID_ROOT}{value.int}"
