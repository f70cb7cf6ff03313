"""A minimal real C-STORE receiver (pynetdicom SCP) standing in for a PACS in unit tests.

Integration tests use a real Orthanc; this is for fast in-process tests of dispatch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt


class Receiver:
    """Collects every data set stored to it; ``arrived`` is set on each store."""

    def __init__(self, ae_title: str = "PACS", transfer_syntaxes: list[str] | None = None) -> None:
        self.ae_title = ae_title
        self.transfer_syntaxes = transfer_syntaxes or ALL_TRANSFER_SYNTAXES
        self.datasets: list[Dataset] = []
        self.arrived = threading.Condition()
        self._server = None
        self.port = 0

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.arrived:
            self.datasets.append(ds)
            self.arrived.notify_all()
        return 0x0000

    def start(self, port: int = 0) -> None:
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, self.transfer_syntaxes)
        self._ae = ae
        self._server = ae.start_server(("127.0.0.1", port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._ae.shutdown()

    def wait_for(self, count: int, timeout: float) -> list[Dataset]:
        """Block until at least ``count`` data sets arrived (or raise TimeoutError)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.datasets) >= count, timeout):
                raise TimeoutError(f"{len(self.datasets)} of {count} objects arrived in {timeout} s")
            return list(self.datasets)


@contextmanager
def running_receiver(ae_title: str = "PACS", port: int = 0,
                     transfer_syntaxes: list[str] | None = None) -> Iterator[Receiver]:
    """A started :class:`Receiver` (accepting ``transfer_syntaxes``, default all), stopped on exit."""
    receiver = Receiver(ae_title, transfer_syntaxes)
    receiver.start(port)
    try:
        yield receiver
    finally:
        receiver.stop()
