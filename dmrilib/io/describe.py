"""``dmri describe`` / ``dmri check``: what an input (one DWI or a BIDS folder) holds, and whether it can run."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from dmrilib.io.bids import DERIVATIVE_KEYS, _find_derivatives, _sessions, find_bids_dwi, read_participants
from dmrilib.io.nifti import DwiHeader, DwiInputError, _shell_text, _size_text, inspect_dwi, load_dwi, shells


# ----------------------------------------------------------------- describe


@dataclass(frozen=True)
class InputReport:
    """What :func:`check_input` found: a readable summary and the problems in it.

    Attributes
    ----------
    text : str
        The summary printed by ``dmri info`` (problems included, one per line).
    problems : tuple of str
        One message per unusable subject (or "no diffusion data found");
        empty when every DWI loads.
    """

    text: str
    problems: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.text


def _check_dwi(path: Path, bval: Path | None, bvec: Path | None, header_only: bool) -> DwiHeader:
    """Header and gradients of a DWI, and unless ``header_only`` its voxels, checked as :func:`load_dwi` does."""
    if not header_only:
        # load_dwi's own checks (readable to the end, finite, non-negative), not a copy of them
        load_dwi(path, bval=bval, bvec=bvec, target_bvalue=None)
    return inspect_dwi(path, bval=bval, bvec=bvec, target_bvalue=None)


def _describe_file(path: Path, header_only: bool) -> str:
    header = _check_dwi(path, None, None, header_only)
    counts = shells(header.bvals, header.b0_threshold)
    dw = header.bvals > header.b0_threshold
    n_dirs = len(np.unique(np.round(header.bvecs[dw], 3), axis=0)) if dw.any() else 0
    img = nib.load(str(path))
    lines = [
        f"DWI file: {path}",
        f"  grid: {'x'.join(map(str, header.shape[:3]))} voxels, {header.shape[3]} volumes",
        f"  voxel size: {_size_text(header.voxel_size)} mm, "
        f"orientation {''.join(nib.aff2axcodes(header.affine))}, dtype {img.get_data_dtype()}",
        f"  shells: {_shell_text(counts.items())}",
        f"  diffusion directions: {n_dirs}",
        f"  gradients: {header.bval_path.name}, {header.bvec_path.name}",
    ]
    if header_only:
        lines.append("  voxel data: not read (--header-only)")
    return "\n".join(lines)


def _describe_bids(root: Path, header_only: bool) -> InputReport:
    participants = read_participants(root)
    subject_dirs = sorted(p for p in root.glob("sub-*") if p.is_dir())
    lines = [f"BIDS dataset: {root}"]
    problems: list[str] = []
    desc = root / "dataset_description.json"
    if desc.is_file():
        try:
            name = json.loads(desc.read_text()).get("Name")
        except (OSError, json.JSONDecodeError):
            name = None
        if name:
            lines.append(f"  name: {name}")
    sessions = Counter(s for d in subject_dirs for s in (_sessions(d) or ["(no session)"]))
    lines.append(f"  subjects: {len(subject_dirs)}; sessions with dwi: "
                 + (", ".join(f"{s} ({n})" for s, n in sorted(sessions.items())) or "none"))
    if len(participants) and "group" in participants.columns:
        groups = Counter(participants["group"])
        lines.append("  groups (participants.tsv): " + ", ".join(f"{g}: {n}" for g, n in sorted(groups.items())))
    elif len(participants):
        lines.append(f"  participants.tsv: {len(participants)} rows, columns {list(participants.columns)}")
    else:
        lines.append("  participants.tsv: absent")
    pipelines = sorted(p.name for p in (root / "derivatives").glob("*") if p.is_dir())
    try:
        dwis = find_bids_dwi(root, pipeline=None)
    except DwiInputError as exc:
        problems.append(str(exc))
        lines.append(f"  problem: {exc}")
        dwis = []
    if dwis:
        lines.append(f"  dwi series used (one per subject): {len(dwis)}, "
                     f"e.g. {dwis[0].dwi.relative_to(root)}"
                     + (" (headers only)" if header_only else ""))
        grids: Counter = Counter()
        schemes: Counter = Counter()
        subject_problems = []
        for item in dwis:
            try:
                header = _check_dwi(item.dwi, item.bval, item.bvec, header_only)
            except DwiInputError as exc:
                subject_problems.append(str(exc))
                continue
            zooms = tuple(round(v, 2) for v in header.voxel_size)
            grids[(header.shape, zooms)] += 1
            schemes[tuple(shells(header.bvals, header.b0_threshold).items())] += 1
        for (shape, zooms), n in grids.most_common():
            lines.append(
                f"  grid {'x'.join(map(str, shape[:3]))} ({shape[3] if len(shape) > 3 else 1} volumes) "
                f"at {' x '.join(f'{z:g}' for z in zooms)} mm: {n} subject(s)"
            )
        for scheme, n in schemes.most_common():
            lines.append(f"  shells {_shell_text(scheme)}: {n} subject(s)")
        for problem in subject_problems:
            lines.append(f"  problem: {problem}")
        problems += subject_problems
    for pipeline in pipelines:
        counts: Counter = Counter()
        for item in dwis:
            counts.update(_find_derivatives(root, pipeline, item.subject, item.session).keys())
        summary = ", ".join(f"{k}: {counts[k]}" for k in DERIVATIVE_KEYS if counts[k]) or "no DWI-space masks for these sessions"
        lines.append(f"  derivatives/{pipeline}: {summary}")
    if not pipelines:
        lines.append("  derivatives: none")
    return InputReport("\n".join(lines), tuple(problems))


def check_input(path: str | Path, *, header_only: bool = False) -> InputReport:
    """Check a DWI file or a BIDS dataset as the pipeline will read it, and summarise it.

    What ``dmri info`` runs. Every DWI is read as :func:`load_dwi` reads it
    (all volumes), so a truncated file or a NaN voxel is found here rather
    than hours later.

    Parameters
    ----------
    path : path-like
        A 4D NIfTI (with ``.bval``/``.bvec`` beside it) or a BIDS dataset root.
    header_only : bool
        Check headers and gradient files only (:func:`inspect_dwi`), without
        reading the voxels: much faster on a large dataset, but blind to
        truncated files and bad voxel values.

    Returns
    -------
    InputReport
        The summary and, for a BIDS dataset, the problems found per subject
        (a dataset with unusable subjects is still summarised).

    Raises
    ------
    DwiInputError
        If the path does not exist, a single file is not a valid DWI, or
        ``participants.tsv`` cannot be used.
    """
    path = Path(path)
    if path.is_dir():
        return _describe_bids(path, header_only)
    if path.is_file():
        return InputReport(_describe_file(path, header_only))
    raise DwiInputError(f"{path}: no such file or folder. Pass a DWI .nii[.gz] or a BIDS dataset root.")


def describe(path: str | Path, *, header_only: bool = False) -> str:
    """A readable summary of a DWI file or a BIDS dataset.

    For a file: grid, voxel size, orientation, shells with volume counts and
    number of directions. For a BIDS folder: subjects and sessions, groups
    from ``participants.tsv``, grids and shells across subjects, derivative
    masks found, and a ``problem:`` line per subject whose DWI does not load.
    The text of :func:`check_input`, which says whether problems were found.

    Raises
    ------
    DwiInputError
        If the path does not exist or the file is not a valid DWI.
    """
    return check_input(path, header_only=header_only).text
