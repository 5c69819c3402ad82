"""A measurement cache on disk: a value measured in one run is reused by a later run when nothing
it depends on has changed.

An entry is stored under the sha256 of its key, which holds everything the measurement depends on:

- the model's identity key: name, source, weights sha256, config sha256, processing flags
  (``fold_ln``, centring, tokenizer...), dtype, device (:class:`~harness.core.model_identity.ModelIdentity`);
- the metric's name, the sha256 of the file that defines it, its parameters and its inputs
  (canonical JSON);
- the fingerprints of the other models of the model's family (``BASE@epoch=N`` snapshots of
  ``BASE``): metrics across a training run load them;
- the suite's own source: the sha256 of every ``.py`` file of the packages ``harness``,
  ``fixtures`` and ``reports`` (any edit to the code recomputes);
- the environment that can change a float: the versions of Python, torch, transformer-lens,
  numpy, transformers and tokenizers, the machine's architecture, the CPU (its model name and the
  vector instruction sets BLAS and ATen choose kernels by), the CPUs this process may use and the
  variables that pin CPU kernels or thread counts (``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``,
  ``OPENBLAS_CORETYPE``, ``OMP_NUM_THREADS``, ...): a cache restored on another machine (a CI
  runner with another CPU) recomputes rather than hide a figure that moves with the CPU.

The stored measurement is the metric's whole value before a claim's ``select``: ``select`` is
applied after the cache, so claims that select different parts of one measurement share it.

Never wrong: an entry holds its full key, and a checksum of its measurement; an entry whose
key or checksum differs, that does not parse, or whose measurement is malformed is ignored with a
:class:`CacheEntryWarning` and recomputed (then overwritten).  A measurement is stored as the
record would write it (:func:`plain`: tuples as lists, numpy scalars as Python numbers, exactly),
and JSON reads that back bit for bit (Python writes floats in their shortest exact form), so a run
from the cache writes the same ``results.json`` values as the run that measured them; a
measurement holding anything else (an array, an object) is not stored and is recomputed every run.
Writes are atomic (:func:`harness.core.atomic_write.write_atomic`): concurrent runs (pytest-xdist
workers, CI jobs sharing a folder) never see half an entry.

Location: the ``--cache-dir`` / ``--claims-cache-dir`` option, else ``$INTERP_CLAIMS_MEASUREMENT_CACHE``,
else ``$XDG_CACHE_HOME/interp-claims/measurements`` (``~/.cache/interp-claims/measurements``).
Off: ``--no-cache`` / ``--claims-no-cache``, or ``$INTERP_CLAIMS_NO_CACHE`` without an explicit folder.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import platform
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.cpu_identity import cpu_model, usable_cpu_ids
from harness.core.atomic_write import write_atomic
from harness.core.measurement import Measurement
from harness.core.versions import installed_version

CACHE_FORMAT = 1
"""The entries' format; a new format starts a new folder (``v2/``) and never reads the old one."""
ENV_DIR = "INTERP_CLAIMS_MEASUREMENT_CACHE"
ENV_OFF = "INTERP_CLAIMS_NO_CACHE"
"""Set (non-empty) to turn the cache off unless a folder is given explicitly (the harness's own
tests set it: a test may register or patch a metric under a name another test uses)."""
PACKAGES = ("torch", "transformer-lens", "numpy", "transformers", "tokenizers")
"""Libraries whose version is part of every key."""
CPU_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 "OPENBLAS_NUM_THREADS")
"""Environment variables that select CPU kernels or thread counts (and so can change the last bits
of a float)."""
CPU_FLAGS = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "avx2", "fma", "avx", "sse4_2", "neon", "asimd")
"""Instruction sets that kernel dispatch (ATen, MKL, OpenBLAS) chooses between."""
SOURCE_PACKAGES = ("harness", "fixtures", "reports")
_ROOT = Path(__file__).resolve().parents[1]


class CacheEntryWarning(UserWarning):
    """A cache entry could not be used (corrupted, foreign, unwritable): the value is recomputed."""


def default_cache_dir() -> Path:
    """``$INTERP_CLAIMS_MEASUREMENT_CACHE``, else ``$XDG_CACHE_HOME/interp-claims/measurements``
    (``$XDG_CACHE_HOME`` defaulting to ``~/.cache``)."""
    given = os.environ.get(ENV_DIR)
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "interp-claims" / "measurements"


def open_cache(disabled: bool = False, folder: str | Path | None = None) -> "MeasurementCache | None":
    """The cache a run uses: none with ``disabled`` (``--no-cache``); in ``folder`` when given;
    else none when ``$INTERP_CLAIMS_NO_CACHE`` is set; else in :func:`default_cache_dir`."""
    if disabled:
        return None
    if folder is not None:
        return MeasurementCache(Path(folder).expanduser())
    if os.environ.get(ENV_OFF):
        return None
    return MeasurementCache(default_cache_dir())


@functools.lru_cache(maxsize=1)
def suite_source_hash() -> str:
    """sha256 over the relative path and bytes of every ``.py`` file of the suite's packages."""
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((_ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(_ROOT).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, str | None]:
    """The library versions, Python, architecture and CPU-kernel variables every key includes."""
    env: dict[str, str | None] = {"python": sys.version.split()[0], "machine": platform.machine()}
    env.update({name: installed_version(name) for name in PACKAGES})
    env.update({name: os.environ.get(name) for name in CPU_VARIABLES})
    env.update(cpu_identity())
    return env


@functools.lru_cache(maxsize=1)
def cpu_identity() -> dict[str, str]:
    """The CPU's model name, the kernel-relevant instruction sets it has, and how many CPUs this
    process may run on (thread counts change the order of float reductions)."""
    model = cpu_model()
    return {"cpu": model.name, "cpu_flags": " ".join(f for f in CPU_FLAGS if f in model.flags),
            "cpus": str(len(usable_cpu_ids()))}


@dataclass(frozen=True)
class CacheKey:
    """What a measurement depends on (``parts``) and its sha256 (``digest``, the entry's file name)."""

    parts: dict[str, str]

    @property
    def digest(self) -> str:
        return hashlib.sha256(_canonical(self.parts).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _file_hash(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def function_source_hash(function: Any) -> str:
    """sha256 of the file that defines ``function`` (a metric registered outside the suite's
    packages, e.g. by a plugin or a test module, is covered too)."""
    try:
        path = inspect.getsourcefile(function)
    except TypeError:
        path = None
    return _file_hash(path) if path else "unknown"


def cache_key(
    model_key: str, metric: str, params: dict[str, Any], inputs: dict[str, Any] | None,
    metric_function: Any = None, *, metric_file: str | None = None, related: str | None = None,
) -> CacheKey:
    """The key of metric ``metric`` (computed by ``metric_function``, or defined in the file
    ``metric_file``: the same hash, without importing the metric) with ``params`` on ``inputs``
    of the model whose identity key is ``model_key``; ``related`` names what the model's family
    (its snapshots, which metrics across a training run load) is made of
    (:meth:`harness.session.Session.related_models`)."""
    if metric_function is not None:
        metric_source = function_source_hash(metric_function)
    else:
        metric_source = _file_hash(str(metric_file)) if metric_file is not None else "none"
    return CacheKey({
        "format": str(CACHE_FORMAT),
        "model": model_key,
        "metric": metric,
        "metric_source": metric_source,
        "related_models": related or "none",
        "params": _canonical(params),
        "inputs": _canonical(inputs),
        "suite_source": suite_source_hash(),
        "environment": _canonical(environment()),
    })


def identity_key(name: str, source: str, fingerprint: dict[str, Any]) -> CacheKey:
    """The key of model ``name``'s identity: its source's fingerprint (the sha256 of the files it
    is read from, its config and seed: :attr:`fixtures.model_entry.ModelEntry.fingerprint`), the
    suite's source (the code that builds it) and the environment (the libraries that build it).
    The identity stored under it is the one the model had when it was last loaded, so a run
    whose measurements are all cached never loads the model."""
    return CacheKey({
        "format": str(CACHE_FORMAT),
        "kind": "model_identity",
        "name": name,
        "source": source,
        "fingerprint": _canonical(fingerprint),
        "suite_source": suite_source_hash(),
        "environment": _canonical(environment()),
    })


@dataclass
class MeasurementCache:
    """Entries under ``root/v<format>/<2 hex>/<sha256>.json``, and this run's counts."""

    root: Path
    hits: int = 0
    misses: int = 0
    stored: int = 0
    ignored: int = 0
    """Entries found but not used (corrupted or foreign), each announced by a warning."""
    not_storable: int = 0
    """Measurements that are not plain JSON (recomputed every run)."""
    _write_failed: bool = field(default=False, repr=False)

    @property
    def folder(self) -> Path:
        return Path(self.root) / f"v{CACHE_FORMAT}"

    def path(self, key: CacheKey) -> Path:
        digest = key.digest
        return self.folder / digest[:2] / f"{digest}.json"

    def get(self, key: CacheKey) -> Measurement | None:
        """The stored measurement of ``key``, or ``None`` (not stored, or unusable: warned)."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        except (OSError, UnicodeDecodeError) as exc:
            return self._ignore(path, f"unreadable ({exc})")
        try:
            measurement = _decode_entry(text, key)
        except _BadEntry as exc:
            return self._ignore(path, str(exc))
        self.hits += 1
        return measurement

    def put(self, key: CacheKey, measurement: Measurement, seconds: float) -> None:
        """Store ``measurement`` under ``key`` (atomically); a folder that cannot be written is
        warned about once and the run goes on without storing."""
        try:
            fields = plain(_fields(measurement))
        except NotPlain:
            self.not_storable += 1
            return
        if self._write_failed:
            return
        payload = _canonical(fields)
        entry = {
            "format": CACHE_FORMAT, "key": key.parts, "checksum": _sha256(payload),
            "compute_seconds": round(seconds, 4), "measurement": fields,
        }
        try:
            write_atomic(self.path(key), json.dumps(entry, sort_keys=True) + "\n")
        except OSError as exc:
            self._write_failed = True
            warnings.warn(f"measurement cache {self.root} cannot be written ({exc}); measurements are not stored", CacheEntryWarning, stacklevel=2)
            return
        self.stored += 1

    def identity_path(self, key: CacheKey) -> Path:
        digest = key.digest
        return self.folder / "models" / digest[:2] / f"{digest}.json"

    def get_identity(self, key: CacheKey) -> dict[str, Any] | None:
        """The model identity (``ModelIdentity.as_dict()``) stored under ``key``, or ``None``
        (not stored; unusable: warned and counted in ``ignored``)."""
        path = self.identity_path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return self._ignore(path, f"unreadable ({exc})", miss=False)
        identity = entry.get("identity") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or entry.get("key") != key.parts:
            return self._ignore(path, "not a model identity entry filed under its key", miss=False)
        if not isinstance(identity, dict) or entry.get("checksum") != _sha256(_canonical(identity)):
            return self._ignore(path, "its checksum does not match its identity", miss=False)
        return identity

    def put_identity(self, key: CacheKey, identity: dict[str, Any]) -> None:
        """Store a loaded model's identity under its fingerprint's ``key`` (atomically)."""
        if self._write_failed:
            return
        entry = {"format": CACHE_FORMAT, "key": key.parts, "checksum": _sha256(_canonical(identity)), "identity": identity}
        try:
            write_atomic(self.identity_path(key), json.dumps(entry, sort_keys=True) + "\n")
        except OSError as exc:
            self._write_failed = True
            warnings.warn(f"measurement cache {self.root} cannot be written ({exc}); measurements are not stored", CacheEntryWarning, stacklevel=2)

    def clear(self) -> int:
        """Remove every entry (all formats); return how many entry files there were."""
        root = Path(self.root)
        count = sum(1 for _ in root.glob("v*/*/*.json")) if root.is_dir() else 0
        for folder in root.glob("v*") if root.is_dir() else ():
            shutil.rmtree(folder, ignore_errors=True)
        return count

    def entries(self) -> list[Path]:
        """The entry files of the current format."""
        return sorted(self.folder.glob("*/*.json")) if self.folder.is_dir() else []

    def summary(self) -> dict[str, Any]:
        """This run's use of the cache, for the record's provenance."""
        return {
            "enabled": True, "dir": str(self.root), "hits": self.hits, "misses": self.misses,
            "stored": self.stored, "ignored": self.ignored, "not_storable": self.not_storable,
        }

    def _ignore(self, path: Path, reason: str, *, miss: bool = True) -> None:
        self.ignored += 1
        self.misses += miss
        warnings.warn(f"ignoring measurement cache entry {path}: {reason}; recomputing", CacheEntryWarning, stacklevel=3)
        return None


class _BadEntry(Exception):
    """Why a cache entry cannot be used."""


_FIELDS = ("value", "uncertainty", "details", "unit", "bound")


def _fields(measurement: Measurement) -> dict[str, Any]:
    return {name: getattr(measurement, name) for name in _FIELDS}


def _decode_entry(text: str, key: CacheKey) -> Measurement:
    """The measurement of an entry's text, checked against ``key`` and its checksum."""
    try:
        entry = json.loads(text)
    except ValueError as exc:
        raise _BadEntry(f"not valid JSON ({exc})") from None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
        raise _BadEntry("not an entry of this format")
    if entry.get("key") != key.parts:
        raise _BadEntry("its key differs from the one it is filed under")
    fields = entry.get("measurement")
    if not isinstance(fields, dict) or set(fields) != set(_FIELDS):
        raise _BadEntry("its measurement lacks fields")
    if entry.get("checksum") != _sha256(_canonical(fields)):
        raise _BadEntry("its checksum does not match its measurement")
    if not isinstance(fields["details"], dict) or fields["bound"] not in (None, "lower", "upper"):
        raise _BadEntry("its measurement is malformed")
    return Measurement(**fields)


class NotPlain(TypeError):
    """A measurement holds something that is not JSON data (and not a scalar that converts to it)."""


def plain(data: Any) -> Any:
    """``data`` as JSON's own types, converted exactly as the record writes it
    (:func:`harness.record.to_json`): tuples become lists, numpy/torch scalars their Python value
    (``.item()``: exact), number and boolean keys strings; NaN and infinity stay floats.  Raises
    :class:`NotPlain` for anything else (an array, an object): such measurements are not stored."""
    if data is None or type(data) in (str, bool, int, float):
        return data
    if type(data) in (list, tuple):
        return [plain(item) for item in data]
    if type(data) is dict:
        return {_plain_key(key): plain(value) for key, value in data.items()}
    item = getattr(data, "item", None)
    if callable(item) and getattr(data, "ndim", None) == 0:
        value = item()
        if type(value) in (bool, int, float):
            return value
    raise NotPlain(f"{type(data).__name__} is not JSON data")


def _plain_key(key: Any) -> str:
    if type(key) in (str, int, float, bool):
        return str(key)
    raise NotPlain(f"a key of type {type(key).__name__}")


def _canonical(data: Any) -> str:
    """Canonical JSON (sorted keys, no spaces); NaN and infinity as JSON's extensions."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=_unknown)


def _unknown(obj: Any) -> Any:
    raise TypeError(f"not JSON: {type(obj).__name__}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
