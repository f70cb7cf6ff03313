"""Delivery of results to a destination of either kind: DIMSE C-STORE or DICOMweb STOW-RS."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from dicom_service.config import Destination, DicomWebDestination
from dicom_service.node import scu, stow
from dicom_service.node.scu import SendTimeouts

log = logging.getLogger(__name__)


def send_results(destination: Destination | DicomWebDestination, paths: Sequence[Path], calling_ae: str,
                 timeouts: SendTimeouts | None = None) -> None:
    """Send result files: C-STORE over one association, or one STOW-RS request.

    Parameters
    ----------
    destination : Destination or DicomWebDestination
    paths : sequence of Path
        Part 10 files.
    calling_ae : str
        Our AE title (DIMSE only).
    timeouts : SendTimeouts, optional
        DIMSE timeouts (a DICOMweb destination has its own ``timeout``).

    Raises
    ------
    DispatchError
        Nothing or not everything was stored; the job is retried.
    """
    if isinstance(destination, DicomWebDestination):
        stow.store_files(destination, paths)
    else:
        scu.send_files(destination, paths, calling_ae, timeouts)


def verify(destination: Destination | DicomWebDestination, calling_ae: str) -> bool:
    """C-ECHO a DIMSE destination; a QIDO-RS search of a DICOMweb one. True if it answered."""
    if isinstance(destination, DicomWebDestination):
        return stow.reachable(destination)
    return scu.echo(destination, calling_ae)


def plain_credentials_warnings(destinations: Sequence[Destination | DicomWebDestination]) -> list[str]:
    """Log (and return) a warning for each DICOMweb destination that would send its token
    or password over plain ``http://``: anyone on the network path can read them."""
    warnings = []
    for destination in destinations:
        if (isinstance(destination, DicomWebDestination) and destination.url.startswith("http://")
                and (destination.token is not None or destination.password is not None)):
            warnings.append(f"destinations[{destination.name}]: credentials are sent over plain http:// "
                            f"({destination.url}); use https:// where the network is not trusted")
    for warning in warnings:
        log.warning("%s", warning)
    return warnings
