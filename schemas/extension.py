"""Modality extensions: a team's own sensor bound to the joint space (``mediabind bind``).

An extension is data only: ``spec.json`` (this module's ``ExtensionSpec``) and
``weights.safetensors`` (a flat state dict) in
``HOME/extensions/<name>/<version>/``, with ``HOME/extensions/<name>/ACTIVE``
naming the version in use. Nothing of it is imported or unpickled.

Two layouts, each with one built-in decoder and stem:

* ``series``: an N-channel time series (``.npy`` [T,C] or [C,T], ``.csv``,
  ``.parquet``), cut into windows of ``samples`` and patched IMU-style
  (``window`` samples × all channels per token).
* ``map``: a 2-D map (``.npy``, ``.png``, ``.tif``/``.tiff``), resized to
  ``height`` × ``width`` and patched depth/thermal-style (a ``patch`` × ``patch``
  convolution over one channel).

The six built-in modality and kind names stay closed (``schemas.modality``):
an extension may not take one of them.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from schemas.modality import Kind, Modality

log = logging.getLogger(__name__)
FORMAT = "mediabind.extension/1"
LAYOUTS = ("series", "map")
SUFFIXES = {"series": (".npy", ".csv", ".parquet"), "map": (".npy", ".png", ".tif", ".tiff")}
SPEC_FILE, WEIGHTS_FILE, ACTIVE_FILE = "spec.json", "weights.safetensors", "ACTIVE"
EXTENSION_BATCH = 64  # model views per batch of an extension (its encoders are small)
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,31}$")
# Names an extension can never take: the closed built-ins, and words the payload
# and the query API already use for something else.
RESERVED_NAMES = frozenset({m.value for m in Modality} | {k.value for k in Kind}
                           | {"file", "image", "video", "mix", "weights", "extension",
                              "vector", "inputs", "negative"})


class ExtensionError(ValueError):
    """An extension that cannot be built, registered or used, and why."""


@dataclass(frozen=True, slots=True)
class Geometry:
    """The input one model view takes.

    ``series``: ``channels`` × ``samples``, ``window`` samples per token.
    ``map``: ``height`` × ``width``, ``patch`` × ``patch`` pixels per token.
    """

    channels: int = 6
    samples: int = 2000
    window: int = 8
    height: int = 224
    width: int = 224
    patch: int = 16

    def tokens(self, layout: str) -> int:
        """Tokens per view, CLS included."""
        if layout == "series":
            return 1 + self.samples // self.window
        return 1 + (self.height // self.patch) * (self.width // self.patch)

    def check(self, layout: str) -> None:
        sizes = {"channels": self.channels, "samples": self.samples, "window": self.window,
                 "height": self.height, "width": self.width, "patch": self.patch}
        bad = [f"{k}={v}" for k, v in sizes.items() if not isinstance(v, int) or v < 1]
        if bad:
            raise ExtensionError(f"geometry sizes must be positive integers: {', '.join(bad)}")
        if layout == "series" and self.samples % self.window:
            raise ExtensionError(f"series geometry: samples ({self.samples}) must be a multiple "
                                 f"of window ({self.window})")
        if layout == "map" and (self.height % self.patch or self.width % self.patch):
            raise ExtensionError(f"map geometry: height {self.height} and width {self.width} must "
                                 f"be multiples of patch {self.patch}")

    def shape(self, layout: str) -> tuple[int, ...]:
        """One view's model input: [channels, samples] or [1, height, width]."""
        return (self.channels, self.samples) if layout == "series" else (1, self.height, self.width)


@dataclass(frozen=True, slots=True)
class TrunkSpec:
    """The new encoder's transformer (the same blocks as the built-in trunks)."""

    width: int = 64
    depth: int = 2
    heads: int = 4

    def check(self) -> None:
        if min(self.width, self.depth, self.heads) < 1 or self.width % self.heads:
            raise ExtensionError(f"trunk width {self.width} must be a positive multiple of "
                                 f"heads {self.heads}, depth {self.depth} at least 1")


@dataclass(frozen=True, slots=True)
class Normalisation:
    """Per-channel mean and std of the training samples, applied before the stem."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


@dataclass(frozen=True, slots=True)
class ExtensionSpec:
    """Everything ingest and search need to use an extension, besides its weights.

    ``version`` is a hash of the weights and this spec, set when the weights are
    written (``with_version``); it enters point ids, so a retrained extension
    writes new points. ``base_model_id`` is the model whose vision space it was
    trained against: it is only usable in collections of that model.
    """

    name: str
    layout: Literal["series", "map"]
    base_preset: str
    base_model_id: str
    geometry: Geometry = field(default_factory=Geometry)
    trunk: TrunkSpec = field(default_factory=TrunkSpec)
    normalisation: Normalisation = field(default_factory=Normalisation)
    patterns: tuple[str, ...] = ()
    out_dim: int = 1024
    temperature: float = 0.1  # the fixed InfoNCE temperature; 1/temperature scales logits
    license: str = ""
    version: str = ""
    trained: Mapping[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.layout not in LAYOUTS:
            raise ExtensionError(f"layout {self.layout!r}: expected one of {', '.join(LAYOUTS)}")
        self.geometry.check(self.layout)
        self.trunk.check()
        if not 0 < self.temperature <= 1:
            raise ExtensionError(f"temperature {self.temperature} must be in (0, 1]")
        for pattern in self.patterns:
            check_pattern(pattern, self.name, self.layout)

    @property
    def channels(self) -> int:
        return self.geometry.channels if self.layout == "series" else 1

    def matches(self, lower_name: str) -> bool:
        """Whether a file name (lower case) follows this extension's convention."""
        return any(lower_name.endswith(p) for p in self.patterns)

    def with_version(self, version: str) -> ExtensionSpec:
        return replace(self, version=version)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, origin: str = "spec") -> ExtensionSpec:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExtensionError(f"{origin}: not JSON ({exc})") from None
        return cls.from_dict(raw, origin)

    @classmethod
    def from_dict(cls, raw: Any, origin: str = "spec") -> ExtensionSpec:
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ExtensionError(f"{origin}: not a {FORMAT} spec")
        raw = dict(raw)
        try:
            parts = {"geometry": Geometry(**raw.pop("geometry", {})),
                     "trunk": TrunkSpec(**raw.pop("trunk", {})),
                     "normalisation": _normalisation(raw.pop("normalisation", {})),
                     "patterns": tuple(raw.pop("patterns", ()))}
            return cls(**raw, **parts)
        except TypeError as exc:
            raise ExtensionError(f"{origin}: {exc}") from None


def _normalisation(raw: dict[str, Any]) -> Normalisation:
    return Normalisation(tuple(float(v) for v in raw.get("mean", (0.0,))),
                         tuple(float(v) for v in raw.get("std", (1.0,))))


def check_name(name: str) -> None:
    """An extension's name: a new lower-case identifier, never a built-in's."""
    if name in RESERVED_NAMES:
        raise ExtensionError(f"{name!r} is a built-in name; an extension needs its own "
                             f"(reserved: {', '.join(sorted(RESERVED_NAMES))})")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ExtensionError(f"extension name {name!r}: use 2-32 lower-case letters, digits "
                             "or '_', starting with a letter")


def default_patterns(name: str, layout: str) -> tuple[str, ...]:
    """``*.radar.npy`` style conventions for every file type the layout reads."""
    return tuple(f".{name}{suffix}" for suffix in SUFFIXES[layout])


def check_pattern(pattern: str, name: str, layout: str) -> None:
    if not any(pattern.endswith(s) for s in SUFFIXES[layout]) or len(pattern) <= 4:
        raise ExtensionError(f"pattern {pattern!r} of {name!r}: a {layout} file must end in "
                             f"one of {', '.join(SUFFIXES[layout])}, with a name part before it")


# --- the registry on disk (HOME/extensions) -------------------------------------------

def extensions_dir(home: Path) -> Path:
    return Path(home) / "extensions"


def version_dir(home: Path, name: str, version: str) -> Path:
    return extensions_dir(home) / name / version


def active_version(home: Path, name: str) -> str | None:
    marker = extensions_dir(home) / name / ACTIVE_FILE
    return marker.read_text().strip() if marker.is_file() else None


def read_spec(folder: Path) -> ExtensionSpec:
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise ExtensionError(f"{folder}: no {SPEC_FILE}")
    return ExtensionSpec.from_json(path.read_text(), str(path))


def registered(home: Path) -> dict[str, ExtensionSpec]:
    """The active version of every registered extension, by name (sorted).

    An extension whose files cannot be read (half copied, or of a newer format) is
    left out with a warning: it must never stop the built-in modalities.
    """
    root = extensions_dir(home)
    found: dict[str, ExtensionSpec] = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        version = active_version(home, folder.name) if folder.is_dir() else None
        if not version:
            continue
        try:
            found[folder.name] = read_spec(folder / version)
        except (ExtensionError, OSError) as exc:
            log.warning("modality extension %s left out: %s", folder.name, exc)
    return found


# --- extension names where a Kind or Modality goes ------------------------------------------

class ExtensionName(str):
    """An extension's name as a file kind and a point modality, with its version.

    It equals the plain name (``"radar"``), has ``.value`` like the built-in enums,
    and carries the version that made its vectors, so point ids, payloads and the
    ledger can name it without a registry lookup. Two versions of one extension are
    not equal and hash apart, so no batch or group ever mixes them; use the plain
    name (``name_of``) for dicts shared with plain strings (reports, counters).
    """

    version: str

    def __new__(cls, name: str, version: str) -> ExtensionName:
        made = super().__new__(cls, name)
        made.version = version
        return made

    def __reduce__(self):
        return ExtensionName, (str(self), self.version)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ExtensionName):
            return str.__eq__(self, other) and self.version == other.version
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((str(self), self.version))

    @property
    def value(self) -> str:
        return str(self)

    @property
    def identity(self) -> str:
        """``name@version``: what point ids and the ledger record of an extension's vectors."""
        return f"{self}@{self.version}"


def is_extension(value: object) -> bool:
    return isinstance(value, ExtensionName)


def name_of(value: object) -> str:
    """The plain name of a Modality, Kind or ExtensionName."""
    return str(getattr(value, "value", value))


_CACHE: dict[tuple, dict[str, ExtensionSpec]] = {}
# Set by ``Shipment.unpack`` in a worker process: the run's own versions for that HOME.
_SHIPPED: dict[str, dict[str, ExtensionSpec]] = {}


def active_specs(home: Path | None) -> dict[str, ExtensionSpec]:
    """``registered(home)``, re-read only when an ACTIVE marker changes (cheap per file).

    In a Ray worker of a run, the run's shipped versions (``Shipment.unpack``) answer
    instead, so every node of a run sees the driver's versions whatever its HOME holds.
    """
    if home is None:
        return {}
    root = extensions_dir(home)
    if str(root) in _SHIPPED:
        return _SHIPPED[str(root)]
    markers = sorted(root.glob(f"*/{ACTIVE_FILE}")) if root.is_dir() else []
    key = (str(root), tuple(_stamp(m) for m in markers))
    found = _CACHE.get(key)
    if found is None:
        found = registered(home)
        _CACHE.clear()
        _CACHE[key] = found
    return found


def _stamp(path: Path) -> tuple:
    stat = path.stat()  # ACTIVE moves by rename: a new inode each time
    return str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size


def extension_kind(spec: ExtensionSpec) -> ExtensionName:
    return ExtensionName(spec.name, spec.version)


def stale_versions(home: Path | None) -> tuple[str, ...]:
    """Versions written under HOME that are no longer active: their points are hidden from
    searches, do not count as done, and are deleted after the next successful run."""
    if home is None or not extensions_dir(home).is_dir():
        return ()
    active = {spec.version for spec in active_specs(home).values()}
    return tuple(sorted(p.name for p in extensions_dir(home).glob("*/*")
                        if p.is_dir() and not p.name.startswith(".") and p.name not in active))


def modality_of(value: object):
    """A segment's modality as the key the pipeline uses: the ``Modality``, or the
    ``ExtensionName`` itself (its version stays with it)."""
    from schemas.modality import Modality

    return value if is_extension(value) else Modality(value)


# --- shipping the registry to other nodes ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Shipment:
    """The active extensions' files, carried with a run to nodes whose HOME lacks them.

    ``unpack`` writes a version folder only where it is missing (by rename, so a
    concurrent reader never sees half of one) and makes the shipped versions the
    ones this process uses for that HOME (``active_specs``). It never moves a
    node's ACTIVE marker that exists: on one machine (or a shared HOME) that is the
    driver's own registry, which a user may be updating.
    """

    entries: tuple[tuple[str, str, tuple[tuple[str, bytes], ...]], ...] = ()

    @classmethod
    def of(cls, home: Path | None) -> Shipment:
        entries = []
        for name, spec in active_specs(home).items():
            folder = version_dir(home, name, spec.version)
            files = tuple((p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file())
            entries.append((name, spec.version, files))
        return cls(tuple(entries))

    def unpack(self, home: Path) -> None:
        specs: dict[str, ExtensionSpec] = {}
        for name, version, files in self.entries:
            target = version_dir(home, name, version)
            if not (target / SPEC_FILE).is_file():
                _write_folder(target, files)
            if active_version(home, name) is None:  # a node that never had it
                marker = extensions_dir(home) / name / ACTIVE_FILE
                partial = marker.with_name(f".{ACTIVE_FILE}.{uuid.uuid4().hex}")
                partial.write_text(version + "\n")
                partial.replace(marker)
            specs[name] = read_spec(target)
        _SHIPPED[str(extensions_dir(home))] = specs


def _write_folder(target: Path, files: tuple[tuple[str, bytes], ...]) -> None:
    staging = target.with_name(f".unpack-{uuid.uuid4().hex}")
    staging.mkdir(parents=True)
    for name, data in files:
        (staging / name).write_bytes(data)
    try:
        staging.rename(target)
    except OSError:  # another process of this node unpacked it first
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / SPEC_FILE).is_file():
            raise
