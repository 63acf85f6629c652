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
============ ====================================== =======================

plus ``variants`` (the model configurations to run, per model) and ``folds``
(the folds to run).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = [
    "ConfigError",
    "Profile",
    "load_profile",
    "config_hash",
    "provenance",
    "PROFILES_DIR",
    "SECTION_CLASSES",
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
}

_PROVENANCE_PACKAGES = ("numpy", "scipy", "torch", "nibabel", "dipy", "nilearn", "pandas", "scikit-learn")


class ConfigError(ValueError):
    """A profile file is missing, malformed or holds an unknown setting."""


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
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
        "git_commit": _git_commit(),
    }
    record.update(extra)
    return record


def _build_section(name: str, values: Mapping[str, Any], source: str):
    module_name, class_name = SECTION_CLASSES[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {unknown} in section '{name}'. "
            f"Known settings: {sorted(known)}."
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: section '{name}': {exc}") from exc


@dataclass(frozen=True)
class Profile:
    """A run profile: named settings for every stage of the pipeline.

    Use :func:`load_profile` to read one. Section dataclasses are built on
    first access (``profile.cohort``, ``profile.train``, ...), so a module's
    heavy imports happen only when its stage is used.
    """

    name: str
    seed: int
    sections: Mapping[str, Mapping[str, Any]]
    variants: Mapping[str, tuple[str, ...]]
    folds: tuple[int, ...]
    source: str = "<dict>"
    description: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "Profile":
        """Validate a parsed profile mapping (see the module docstring)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a profile must be a YAML mapping, got {type(data).__name__}.")
        allowed = {"name", "seed", "description", "variants", "folds", *SECTION_CLASSES}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"{source}: unknown top-level key(s) {unknown}. Allowed: {sorted(allowed)}.")
        for key in ("name", "variants", "folds"):
            if key not in data:
                raise ConfigError(f"{source}: missing required key '{key}'.")
        variants = data["variants"]
        if not isinstance(variants, Mapping) or not set(variants) <= {"dae", "recdisc"}:
            raise ConfigError(f"{source}: 'variants' must map 'dae'/'recdisc' to lists of variant ids.")
        folds = tuple(int(k) for k in data["folds"])
        sections = {k: dict(data.get(k) or {}) for k in SECTION_CLASSES}
        return cls(
            name=str(data["name"]),
            seed=int(data.get("seed", 0)),
            sections=sections,
            variants={k: tuple(str(v) for v in vs) for k, vs in variants.items()},
            folds=folds,
            source=source,
            description=str(data.get("description", "")),
        )

    def section(self, name: str):
        """The validated dataclass of section ``name`` (seeded from ``seed`` when it has one)."""
        if name not in SECTION_CLASSES:
            raise KeyError(f"unknown section {name!r}; known: {sorted(SECTION_CLASSES)}")
        values = dict(self.sections.get(name, {}))
        module_name, class_name = SECTION_CLASSES[name].split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if "seed" in {f.name for f in dataclasses.fields(cls)}:
            values.setdefault("seed", self.seed)
        return _build_section(name, values, self.source)

    @cached_property
    def cohort(self):
        return self.section("cohort")

    @cached_property
    def prepare(self):
        return self.section("prepare")

    @cached_property
    def model(self):
        return self.section("model")

    @cached_property
    def train(self):
        return self.section("train")

    @cached_property
    def evaluate(self):
        return self.section("evaluate")

    @cached_property
    def groundtruth(self):
        return self.section("groundtruth")

    @cached_property
    def registration(self):
        return self.section("registration")

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (model, variant, fold) training job of this profile."""
        return [(m, v, f) for m in ("dae", "recdisc") for v in self.variants.get(m, ()) for f in self.folds]

    def hash(self) -> str:
        """Config hash of the whole profile."""
        return config_hash(self.name, self.seed, self.sections, self.variants, self.folds)


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load a profile by name (``"quick"``) or by path to a YAML file.

    Raises
    ------
    ConfigError
        If the file does not exist, is not valid YAML, or holds unknown keys.
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
