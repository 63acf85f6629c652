"""Run profiles (``configs/*.yaml``), config hashing and provenance records.

A profile is one YAML file with one section per stage. Each section is turned
into the frozen dataclass of the module that owns the stage, so profiles
differ only in values, never in code paths:

============ ====================================== =======================
section      dataclass                              stage
============ ====================================== =======================
cohort       :class:`dmrilib.simulate.CohortConfig` simulated cohort
prepare      :class:`dmrilib.dataset.PrepareConfig` network-grid arrays
model        :class:`dmrilib.models.ModelConfig`    network sizes
train        :class:`dmrilib.crossval.TrainConfig`  optimisation, folds
evaluate     :class:`dmrilib.metrics.EvalConfig`    thresholds, bootstrap
groundtruth  :class:`dmrilib.groundtruth.SegConfig` segmentation U-Net
registration :class:`dmrilib.groundtruth.RegConfig` T1w -> DWI registration
bids         :class:`dmrilib.study.BidsConfig`      a run on your BIDS dataset (``BIDS=``)
============ ====================================== =======================

plus ``variants`` (the model configurations to run, per model) and ``folds``
(the folds to run).

:func:`load_profile` checks the whole profile at once: every section is built
(types checked strictly from the dataclass's annotations, ranges by the
dataclass), the sections in :data:`REQUIRED_SECTIONS` must be present,
variants must parse with the models' grammar and folds must exist. Every
problem is a :class:`ConfigError` naming the file and the key path, e.g.
``configs/x.yaml: train.epochs: expected an integer, got '2'``.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import importlib
import json
import math
import numbers
import os
import platform
import re
import subprocess
import types
import typing
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml

from dmrilib.variants import DAE, MODELS, RECDISC, did_you_mean, parse_dae_variant, parse_recdisc_variant

__all__ = [
    "ConfigError",
    "Profile",
    "load_profile",
    "config_hash",
    "provenance",
    "PROFILES_DIR",
    "SECTION_CLASSES",
    "REQUIRED_SECTIONS",
    "STAGE_SECTIONS",
]

#: Folder holding the shipped profiles (``smoke``, ``quick``, ``gpu``, ``paper``).
PROFILES_DIR = Path(__file__).resolve().parent.parent / "configs"

#: Section name -> "module:ClassName" of the dataclass that validates it.
SECTION_CLASSES = {
    "cohort": "dmrilib.simulate:CohortConfig",
    "prepare": "dmrilib.dataset:PrepareConfig",
    "model": "dmrilib.models:ModelConfig",
    "train": "dmrilib.crossval:TrainConfig",
    "evaluate": "dmrilib.metrics:EvalConfig",
    "groundtruth": "dmrilib.groundtruth.config:SegConfig",
    "registration": "dmrilib.groundtruth.config:RegConfig",
    "bids": "dmrilib.study:BidsConfig",
}
#: Optional sections that enter ``Profile.sections`` (and the profile hash)
#: only when written: a profile without them keeps its hash.
_WRITTEN_ONLY = ("bids",)

#: Workflow stage -> the sections its results depend on (``segmentation``:
#: the ground-truth U-Net, trained on subjects simulated with the cohort settings).
STAGE_SECTIONS = {
    "cohort": ("cohort", "prepare"),
    "train": ("model", "train"),
    "evaluate": ("evaluate",),
    "groundtruth": ("groundtruth", "registration"),
    "segmentation": ("cohort", "groundtruth"),
}

_PROVENANCE_PACKAGES = ("numpy", "scipy", "torch", "nibabel", "dipy", "nilearn", "pandas", "scikit-learn")


class ConfigError(ValueError):
    """A profile file is missing, malformed or holds an unknown setting."""


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # Private fields (leading underscore) are bookkeeping, not settings.
        return {f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(*objs: Any) -> str:
    """Short sha256 (12 hex digits) of the canonical JSON of one or more configs.

    Dataclasses, mappings, sequences and scalars are accepted; key order does
    not matter. The same settings always give the same hash.
    """
    payload = json.dumps([_canonical(o) for o in objs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(**extra: Any) -> dict[str, Any]:
    """What produced a result: package versions, Python, platform, git commit.

    Every result file embeds this next to its config hash and seed.

    Parameters
    ----------
    **extra
        Additional entries (e.g. ``config_hash=..., seed=...``).
    """
    versions = {}
    for name in ("dmrilib",) + _PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    record = {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_record(),
        "git_commit": _git_commit(),
    }
    record.update(extra)
    return record


#: Variables that change which code paths numpy, OpenBLAS, oneDNN, ATen or
#: MKL take, and so the last bits of their results.
_ISA_VARIABLES = ("NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "OPENBLAS_CORETYPE", "GLIBC_TUNABLES",
                  "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_record() -> dict[str, Any]:
    """The CPU and the instruction-set paths this process computes with.

    Trained weights depend on them in the last bits (oneDNN's AVX-512 and
    AVX2 convolutions sum in another order), so every result records them:
    the CPU model, the SIMD extensions numpy dispatches to, torch's ATen
    capability and threads (only when torch is already imported: evaluation
    jobs do not import it), and any variable that overrides these choices.
    """
    import sys

    import numpy as np

    features = np._core._multiarray_umath.__cpu_features__
    record: dict[str, Any] = {
        "model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "numpy_simd": [f for f in ("AVX512_SPR", "AVX512_ICL", "AVX512_SKX", "AVX512F", "AVX2", "FMA3", "AVX",
                                   "SSE42", "ASIMD", "SVE", "VSX", "VX") if features.get(f)],
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        record["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        record["torch_threads"] = torch.get_num_threads()
    overrides = {name: os.environ[name] for name in _ISA_VARIABLES if name in os.environ}
    if overrides:
        record["overrides"] = overrides
    return record


# --------------------------------------------------------------- validation
#
# A profile is checked completely when it is loaded, so that a typo fails in
# the first second rather than after hours of other jobs (issue 13). Types are
# checked strictly, from each dataclass's field annotations, before the values
# reach the dataclass: its __post_init__ converts with int()/float(), which
# would turn "2" or 2.5 epochs into a number or a late crash. Ranges are the
# dataclasses' own business (their __post_init__).

#: Sections a profile must set. Their defaults are the paper's protocol
#: (500 epochs, 60 subjects at 2.4 mm, paper widths): a forgotten section
#: would silently mean GPU-days, so an empty one (``model: {}``) says "the
#: defaults" on purpose. ``groundtruth`` and ``registration`` default to
#: settings that are cheap on any profile (tuned for ``quick``).
REQUIRED_SECTIONS = ("cohort", "prepare", "model", "train", "evaluate")

# A profile's name becomes a folder (results/<name>/).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML (true/null rather than True/None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _expected(hint: Any) -> str:
    """What a type annotation asks for, in the words of a YAML user."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        alternatives = [a for a in args if a is not type(None)]
        words = " or ".join(_expected(a) for a in alternatives)
        return f"null or {words}" if len(alternatives) < len(args) else words
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} values"
    if origin in (collections.abc.Mapping, dict):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(hint, "values")


def _check_value(value: Any, hint: Any, key: str) -> None:
    """Raise ``ConfigError("<key>: expected ..., got ...")`` unless ``value`` fits ``hint``.

    Strict where YAML is forgiving and Python's int()/float() even more so:
    an integer setting refuses ``"2"``, ``2.5`` and ``true``; a number
    accepts integers; a tuple accepts a YAML list; booleans are ``true`` or
    ``false`` only. Annotations this does not know pass unchecked.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(extra: str = "") -> None:
        raise ConfigError(f"{key}: expected {_expected(hint)}, got {_show(value)}{extra}")

    if hint is Any:
        return
    if hint is bool:
        if not isinstance(value, bool):
            fail()
    elif hint is int:
        if not _is_int(value):
            fail()
    elif hint is float:
        if isinstance(value, str) and _looks_like_number(value):
            fail(". Write numbers without quotes; YAML reads an exponent without a decimal point "
                 "(1e-4) as text, so write 1.0e-4")
        if not _is_real(value):
            fail()
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {_show(value)}")
    elif hint is str:
        if not isinstance(value, str):
            fail()
    elif origin is Literal:
        # `True in (1,)` holds in Python: compare types too
        if not any(type(value) is type(a) and value == a for a in args):
            fail()
    elif origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        alternatives = [a for a in args if a is not type(None)]
        errors = []
        for alternative in alternatives:
            try:
                _check_value(value, alternative, key)
                return
            except ConfigError as exc:
                errors.append(exc)
        # One alternative (X | None): keep its message where it says more than
        # "expected X" (a hint on writing numbers, a finite value).
        generic = f"{key}: expected {_expected(alternatives[0])}, got {_show(value)}"
        if len(alternatives) == 1 and str(errors[0]) != generic:
            raise errors[0]
        fail()
    elif origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail()
        if len(args) == 2 and args[1] is Ellipsis:
            item_hints = [args[0]] * len(value)
        else:
            if len(value) != len(args):
                fail()
            item_hints = list(args)
        for i, (item, item_hint) in enumerate(zip(value, item_hints)):
            _check_value(item, item_hint, f"{key}[{i}]")
    elif origin in (collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            fail()
        key_hint, value_hint = args if args else (Any, Any)
        for k, v in value.items():
            _check_value(k, key_hint, f"{key} key {_show(k)}")
            _check_value(v, value_hint, f"{key}.{k}")


def _looks_like_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _section_class(name: str) -> type:
    module_name, class_name = SECTION_CLASSES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def _build_section(name: str, values: Any, source: str):
    """Check one section's settings against its dataclass and build it.

    Raises
    ------
    ConfigError
        ``<source>: <section>.<key>: <problem>`` for an unknown setting, a
        value of the wrong type, or one the dataclass refuses.
    """
    cls = _section_class(name)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {name}: expected a mapping of settings, got {_show(values)}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {unknown} in section '{name}'. "
            f"Known settings: {sorted(known)}."
        )
    for key, value in values.items():
        try:
            _check_value(value, hints[key], f"{name}.{key}")
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}.") from None
    # Seeds go to numpy/torch generators, which refuse negative ones (late);
    # the profile, not the dataclass, decides every section's seed.
    if "seed" in values and values["seed"] < 0:
        raise ConfigError(f"{source}: {name}.seed: expected a non-negative integer, got {values['seed']}.")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        # The dataclasses' messages mostly name their key already ("train.epochs must be ...").
        where = "" if message.startswith((f"{name}.", f"{name}:")) else f"{name}: "
        raise ConfigError(f"{source}: {where}{message}") from exc


def _check_variants(variants: Any, source: str) -> dict[str, tuple[str, ...]]:
    """Parse ``variants`` with the models' own grammar (:mod:`dmrilib.variants`)."""
    if not isinstance(variants, Mapping):
        raise ConfigError(f"{source}: variants: expected a mapping of {DAE!r}/{RECDISC!r} to lists of variant ids, "
                          f"got {_show(variants)}.")
    unknown = sorted(str(k) for k in set(variants) - set(MODELS))
    if unknown:
        raise ConfigError(f"{source}: variants: unknown model(s) {unknown}; the models are {DAE!r} and {RECDISC!r}."
                          + (did_you_mean(unknown[0], MODELS) if len(unknown) == 1 else ""))
    parse = {DAE: parse_dae_variant, RECDISC: parse_recdisc_variant}
    out = {}
    for model, ids in variants.items():
        ids = [] if ids is None else ids  # `recdisc:` with every entry commented out
        if not isinstance(ids, (list, tuple)):
            raise ConfigError(f"{source}: variants.{model}: expected a list of variant ids, got {_show(ids)}.")
        for i, variant in enumerate(ids):
            if not isinstance(variant, str):
                raise ConfigError(f"{source}: variants.{model}[{i}]: expected a variant id (text), got {_show(variant)}.")
            try:
                parse[model](variant)
            except ValueError as exc:
                raise ConfigError(f"{source}: variants.{model}[{i}]: {exc}") from exc
            if variant in ids[:i]:
                raise ConfigError(f"{source}: variants.{model}: {variant!r} is listed twice; list each once.")
        out[model] = tuple(ids)
    return out


def _check_folds(folds: Any, source: str) -> tuple[int, ...]:
    if not isinstance(folds, (list, tuple)) or not folds:
        raise ConfigError(f"{source}: folds: expected a non-empty list of fold indices (e.g. [0]), got {_show(folds)}.")
    for i, k in enumerate(folds):
        if not _is_int(k) or k < 0:
            raise ConfigError(f"{source}: folds[{i}]: expected a non-negative integer, got {_show(k)}.")
        if k in folds[:i]:
            raise ConfigError(f"{source}: folds: fold {k} is listed twice; list each once.")
    return tuple(int(k) for k in folds)


@dataclass(frozen=True)
class Profile:
    """A run profile: named settings for every stage of the pipeline.

    Use :func:`load_profile` to read one. Every section is checked and built
    into its dataclass when the profile is made (``profile.cohort``,
    ``profile.train``, ...), so a bad setting fails at once, naming the file
    and the key, before any job runs.

    Attributes
    ----------
    sections : mapping
        The settings as written in the file (section -> key -> value); the
        workflow hashes these, so they stay as written.
    fidelity : {"code", "paper"}
        Top-level ``fidelity`` key: whose protocol the switched keys of every
        section follow when the profile leaves them unset (the authors' code
        or the paper's text; :mod:`dmrilib.fidelity`).
    """

    name: str
    seed: int
    sections: Mapping[str, Mapping[str, Any]]
    variants: Mapping[str, tuple[str, ...]]
    folds: tuple[int, ...]
    source: str = "<dict>"
    description: str = ""
    fidelity: str = "code"

    def __post_init__(self) -> None:
        for name in SECTION_CLASSES:
            # cached_property's slot: `profile.train` is this object from now on
            self.__dict__[name] = self._build(name)
        n_folds = self.train.n_folds
        for i, k in enumerate(self.folds):
            if k >= n_folds:
                raise ConfigError(f"{self.source}: folds[{i}]: fold {k} does not exist: train.n_folds is "
                                  f"{n_folds} (folds 0-{n_folds - 1}).")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "Profile":
        """Validate a parsed profile mapping (see the module docstring).

        Raises
        ------
        ConfigError
            ``<source>: <key path>: <problem>`` for the first problem found:
            an unknown or missing key or section, a value of the wrong type
            or out of range, an unknown variant, a fold outside ``train.n_folds``.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a profile must be a YAML mapping, got {type(data).__name__}.")
        allowed = {"name", "seed", "description", "fidelity", "variants", "folds", *SECTION_CLASSES}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"{source}: unknown top-level key(s) {unknown}. Allowed: {sorted(allowed)}.")
        for key in ("name", "variants", "folds"):
            if key not in data:
                raise ConfigError(f"{source}: missing required key '{key}'.")
        name = data["name"]
        if not isinstance(name, str):
            raise ConfigError(f"{source}: name: expected a string, got {_show(name)}.")
        if not _NAME.match(name):
            raise ConfigError(f"{source}: name: {name!r} is not usable as a folder name (results/<name>/); "
                              "use letters, digits, '.', '_' and '-'.")
        seed = data.get("seed", 0)
        if not _is_int(seed) or seed < 0:
            raise ConfigError(f"{source}: seed: expected a non-negative integer, got {_show(seed)}.")
        fidelity = data.get("fidelity", "code")
        from dmrilib.fidelity import FIDELITIES

        if fidelity not in FIDELITIES:
            raise ConfigError(f"{source}: fidelity: expected one of {', '.join(map(repr, FIDELITIES))} (whose "
                              f"protocol the unset keys follow: the authors' code or the paper's text), "
                              f"got {_show(fidelity)}.")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{source}: description: expected a string, got {_show(description)}.")
        missing = [s for s in REQUIRED_SECTIONS if s not in data]
        if missing:
            raise ConfigError(
                f"{source}: missing required section(s) {missing}. Their defaults are the paper's protocol "
                "(e.g. 500 epochs); write the section, or an empty one (`model: {}`) to mean the defaults."
            )
        sections = {}
        for section in SECTION_CLASSES:
            if section in _WRITTEN_ONLY and section not in data:
                continue
            # `model:` with nothing under it is YAML null: the defaults, like `model: {}`
            values = data.get(section)
            values = {} if values is None else values
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: {section}: expected a mapping of settings, got {_show(values)}.")
            sections[section] = dict(values)
        return cls(
            name=name,
            seed=int(seed),
            sections=sections,
            variants=_check_variants(data["variants"], source),
            folds=_check_folds(data["folds"], source),
            source=source,
            description=description,
            fidelity=fidelity,
        )

    def _build(self, name: str):
        values = dict(self.sections.get(name, {}))
        fields = {f.name for f in dataclasses.fields(_section_class(name))}
        if "seed" in fields:
            values.setdefault("seed", self.seed)
        # The top-level side (dmrilib.fidelity) reaches every section with switched keys;
        # a section may still name its own.
        if "fidelity" in fields:
            values.setdefault("fidelity", self.fidelity)
        return _build_section(name, values, self.source)

    def section(self, name: str):
        """The validated dataclass of section ``name`` (seeded from ``seed`` when it has one)."""
        if name not in SECTION_CLASSES:
            raise KeyError(f"unknown section {name!r}; known: {sorted(SECTION_CLASSES)}")
        return getattr(self, name)

    @cached_property
    def cohort(self):
        return self._build("cohort")

    @cached_property
    def prepare(self):
        return self._build("prepare")

    @cached_property
    def model(self):
        return self._build("model")

    @cached_property
    def train(self):
        return self._build("train")

    @cached_property
    def evaluate(self):
        return self._build("evaluate")

    @cached_property
    def groundtruth(self):
        return self._build("groundtruth")

    @cached_property
    def registration(self):
        return self._build("registration")

    @cached_property
    def bids(self):
        return self._build("bids")

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (model, variant, fold) training job of this profile."""
        return [(m, v, f) for m in MODELS for v in self.variants.get(m, ()) for f in self.folds]

    def stage_hash(self, stage: str) -> str:
        """Hash of the settings a workflow stage depends on (:data:`STAGE_SECTIONS`).

        Computed from the sections' dataclasses, defaults filled in, so that a
        changed default re-runs the stage as an edited YAML does. Settings
        that change only speed (:data:`dmrilib.crossval.RUNTIME_FIELDS`, e.g.
        ``train.stack_folds``) are left out: switching them re-runs nothing.
        """
        if stage not in STAGE_SECTIONS:
            raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGE_SECTIONS)}")
        # speed settings (e.g. train.stack_folds, compile, device) give the same results: not hashed
        sections = (getattr(section, "result_settings", lambda: section)()
                    for section in (self.section(name) for name in STAGE_SECTIONS[stage]))
        return config_hash(*sections, self.seed)

    def hash(self) -> str:
        """Config hash of the whole profile."""
        return config_hash(self.name, self.seed, self.fidelity, self.sections, self.variants, self.folds)


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load a profile by name (``"quick"``) or by path to a YAML file.

    Raises
    ------
    ConfigError
        If the file does not exist, is not valid YAML, or any setting is
        unknown, missing, of the wrong type or out of range (see
        :meth:`Profile.from_dict`).
    """
    candidate = Path(name_or_path)
    if candidate.suffix not in (".yaml", ".yml"):
        candidate = PROFILES_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        shipped = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"{candidate}: no such profile. Shipped profiles: {shipped}; or pass a path to a YAML file.")
    try:
        data = yaml.safe_load(candidate.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{candidate}: not valid YAML ({exc}).") from exc
    return Profile.from_dict(data, source=str(candidate))
