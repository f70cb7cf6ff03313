"""Implant systems: fixed combinations of design values, read from a YAML file.

The bundled file ``dicom_service/training/data/implant_systems.yaml`` holds only
fictitious systems (marked "synthetic") and is the one place their names live; users may
pass their own file with the same keys. See that file's header for the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dicom_service.training.implant_design import ImplantDesign

_SYSTEM_KEYS = frozenset({"name", "manufacturer", "design", "length_mm", "diameter_mm"})
_SIZE_KEYS = ("length_mm", "diameter_mm")
DESIGN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ImplantDesign) if f.name not in _SIZE_KEYS)
_BOOL_KEYS = frozenset({"microthread", "apical_groove"})


@dataclass(frozen=True)
class ImplantSystem:
    """A named implant system: design values fixed, size drawn from its ranges.

    Attributes
    ----------
    name, manufacturer : str
    design : dict
        Every key of :data:`DESIGN_KEYS` with its value (enum values as strings, booleans,
        the pitch as float), exactly as accepted by :class:`ImplantDesign`.
    length_mm, diameter_mm : tuple of float
        Inclusive ``(min, max)`` ranges in mm.
    """

    name: str
    manufacturer: str
    design: dict[str, Any]
    length_mm: tuple[float, float]
    diameter_mm: tuple[float, float]

    def make(self, length_mm: float, diameter_mm: float) -> ImplantDesign:
        """The concrete :class:`ImplantDesign` of this system at the given size (mm)."""
        return ImplantDesign(**self.design, length_mm=float(length_mm), diameter_mm=float(diameter_mm))

    def sample(self, rng: np.random.Generator) -> ImplantDesign:
        """A design of this system with length and diameter drawn uniformly, rounded to 0.1 mm
        (0.5 mm steps for the length, as catalogues list them)."""
        length = round(float(rng.uniform(*self.length_mm)) * 2.0) / 2.0
        diameter = round(float(rng.uniform(*self.diameter_mm)), 1)
        length = min(max(length, self.length_mm[0]), self.length_mm[1])
        diameter = min(max(diameter, self.diameter_mm[0]), self.diameter_mm[1])
        return self.make(length, diameter)


def default_systems_path() -> Path:
    """Path of the bundled YAML file of synthetic systems."""
    return Path(str(resources.files("dicom_service.training").joinpath("data", "implant_systems.yaml")))


def _range(entry: dict[str, Any], key: str, where: str) -> tuple[float, float]:
    value = entry[key]
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{where}: {key} must be a list [min, max] of numbers, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if low > high:
        raise ValueError(f"{where}: {key} min {low} is greater than max {high}")
    return low, high


def _parse_system(entry: Any, index: int) -> ImplantSystem:
    where = f"systems[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a mapping, got {type(entry).__name__}")
    name = entry.get("name")
    if isinstance(name, str) and name.strip():
        where = f"systems[{index}] ({name!r})"
    missing = sorted(_SYSTEM_KEYS - set(entry))
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(entry) - _SYSTEM_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    for key in ("name", "manufacturer"):
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise ValueError(f"{where}: {key} must be a non-empty string")
    design = entry["design"]
    if not isinstance(design, dict):
        raise ValueError(f"{where}: design must be a mapping")
    missing = sorted(set(DESIGN_KEYS) - set(design))
    if missing:
        raise ValueError(f"{where}: design is missing key(s) {', '.join(missing)}")
    unknown = sorted(set(design) - set(DESIGN_KEYS))
    if unknown:
        raise ValueError(f"{where}: design has unknown key(s) {', '.join(map(str, unknown))}")
    for key in _BOOL_KEYS:
        if not isinstance(design[key], bool):
            raise ValueError(f"{where}: design.{key} must be true or false, got {design[key]!r}")
    pitch = design["thread_pitch_mm"]
    if not isinstance(pitch, (int, float)) or isinstance(pitch, bool):
        raise ValueError(f"{where}: design.thread_pitch_mm must be a number, got {pitch!r}")
    length = _range(entry, "length_mm", where)
    diameter = _range(entry, "diameter_mm", where)
    system = ImplantSystem(name=entry["name"].strip(), manufacturer=entry["manufacturer"].strip(),
                           design={**design, "thread_pitch_mm": float(pitch)},
                           length_mm=length, diameter_mm=diameter)
    for lo_hi in ((length[0], diameter[0]), (length[1], diameter[1])):
        try:
            system.make(*lo_hi)
        except ValueError as exc:
            raise ValueError(f"{where}: design: {exc}") from exc
    return system


def load_implant_systems(path: str | Path | None = None) -> list[ImplantSystem]:
    """Read and validate implant systems from a YAML file.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file with ``schema_version: 1`` and a ``systems`` list; by default the
        bundled synthetic systems (:func:`default_systems_path`).

    Returns
    -------
    list of ImplantSystem
        In file order.

    Raises
    ------
    ValueError
        The file is not valid YAML or an entry is malformed; the message names the entry
        (index and name) and the key.
    """
    source = Path(path) if path is not None else default_systems_path()
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{source}: top level must be a mapping with 'systems'")
    if data.get("schema_version") != 1:
        raise ValueError(f"{source}: schema_version must be 1, got {data.get('schema_version')!r}")
    entries = data.get("systems")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: 'systems' must be a non-empty list")
    systems = [_parse_system(entry, i) for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for i, system in enumerate(systems):
        if system.name in seen:
            raise ValueError(f"{source}: systems[{i}]: duplicate name {system.name!r}")
        seen.add(system.name)
    return systems
