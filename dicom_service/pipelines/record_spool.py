"""Fixed-size records of arrays in a temporary file, written and read by index.

A stream that must walk part of a clip backwards (a correction carried to the frames
before the corrected one) keeps what it needs of those frames here instead of in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np


class RecordSpool:
    """Records of the same arrays (shapes and dtypes), one per index, in a temporary file
    (deleted when closed).

    Parameters
    ----------
    fields : list of (shape, dtype)
        The arrays of one record, in order.
    directory : path, optional
        Where the file goes (the system's temporary folder by default).
    """

    def __init__(self, fields: list[tuple[tuple[int, ...], np.dtype]], directory: Path | None = None) -> None:
        self.fields = [(tuple(int(n) for n in shape), np.dtype(dtype)) for shape, dtype in fields]
        self.record_bytes = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in self.fields)
        self._file = tempfile.TemporaryFile(prefix="dicom-service-spool-", dir=directory)  # noqa: SIM115
        self.records = 0

    @staticmethod
    def free_bytes(directory: Path | None = None) -> int:
        """Free space where a spool in ``directory`` would go."""
        return shutil.disk_usage(directory or tempfile.gettempdir()).free

    def put(self, index: int, *arrays: np.ndarray) -> None:
        """Write the record ``index`` (0-based), the arrays in the order of ``fields``.

        Raises
        ------
        ValueError
            A wrong number of arrays, or one of a wrong shape or dtype.
        """
        if len(arrays) != len(self.fields) or index < 0:
            raise ValueError(f"a record holds {len(self.fields)} arrays at an index >= 0")
        for array, (shape, dtype) in zip(arrays, self.fields, strict=True):
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(f"array {array.shape} {array.dtype} is not {shape} {dtype}")
        self._file.seek(index * self.record_bytes)
        for array in arrays:
            self._file.write(np.ascontiguousarray(array).tobytes())
        self.records = max(self.records, index + 1)

    def get(self, index: int) -> tuple[np.ndarray, ...]:
        """The arrays of record ``index``.

        Raises
        ------
        IndexError
            No record was written there.
        """
        if not 0 <= index < self.records:
            raise IndexError(f"record {index} outside the {self.records} written")
        self._file.seek(index * self.record_bytes)
        data = bytearray(self._file.read(self.record_bytes))  # writable arrays
        arrays, start = [], 0
        for shape, dtype in self.fields:
            size = int(np.prod(shape)) * dtype.itemsize
            arrays.append(np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=start).reshape(shape))
            start += size
        return tuple(arrays)

    def close(self) -> None:
        """Delete the file."""
        self._file.close()

    def __enter__(self) -> RecordSpool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
