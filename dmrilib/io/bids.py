"""BIDS datasets: one name parser, builder and lister, and the DWI finder every reader uses."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

from dmrilib.io.nifti import _NIFTI_SUFFIXES, DwiInputError, _sidecar


#: Derivative images looked up per subject, keyed by the name used in
#: :class:`BidsDwi.derivatives`, with the BIDS ``desc-``/suffix they carry.
DERIVATIVE_KEYS: Mapping[str, str] = {
    "brain": "desc-brain_mask",
    "wmgm": "desc-wmgm_mask",
    "dseg": "dseg",
    "lesion": "desc-lesion_mask",
    "infiltration": "desc-infiltration_mask",
    "tumour_dseg": "desc-tumour_dseg",
    "followup_lesion": "desc-lesion_mask",
}


# --------------------------------------------------------------------- BIDS names

#: What a filter of :func:`bids_files` may be: None (any value), a label (that
#: value), a collection of labels (one of them; None in it admits files without
#: the entity) or a predicate on the value (None when the file lacks the entity).
EntityFilter = str | Collection[str | None] | Callable[[str | None], bool] | None


@dataclass(frozen=True)
class BidsName:
    """A BIDS file name taken apart, as :func:`parse_bids_name` reads it.

    Attributes
    ----------
    entities : mapping of str to str
        The ``key-label`` pairs in file order, keyed without the dash:
        ``sub-01_ses-pre_desc-brain_mask.nii.gz`` has ``{"sub": "01", "ses":
        "pre", "desc": "brain"}``.
    suffix : str
        The last ``_``-separated part before the extension (``"mask"``,
        ``"dwi"``, ``"T1w"``).
    extension : str
        Everything from the first ``.`` of that part (``".nii.gz"``,
        ``".bval"``); empty when there is none.
    """

    entities: Mapping[str, str]
    suffix: str
    extension: str

    def get(self, key: str) -> str | None:
        """The label of entity ``key``, or None when the name lacks it."""
        return self.entities.get(key)


def parse_bids_name(path: str | os.PathLike) -> BidsName:
    """Take a BIDS file name apart into entities, suffix and extension.

    Like nilearn's ``parse_bids_filename``: the name is split at ``_``; every
    part but the last that holds a ``-`` is an entity (key before the first
    ``-``, label after it; a repeated key keeps its first label); the last
    part is the suffix, up to its first ``.``, and the extension. Parts
    without a ``-`` are not entities and are left out.

    Parameters
    ----------
    path : path-like
        A file path or bare name (``"sub-01_dwi.nii.gz"``, or a fragment
        such as ``"desc-brain_mask"``).

    Returns
    -------
    BidsName

    See Also
    --------
    bids_name, bids_files
    """
    *parts, last = Path(path).name.split("_")
    suffix, dot, rest = last.partition(".")
    entities: dict[str, str] = {}
    for part in parts:
        key, dash, label = part.partition("-")
        if dash:
            entities.setdefault(key, label)
    return BidsName(entities=entities, suffix=suffix, extension=dot + rest)


def _label(key: str, value: str) -> str:
    """``value`` without its ``<key>-`` prefix (``"sub-01"`` and ``"01"`` both give ``"01"``)."""
    return value[len(key) + 1:] if value.startswith(f"{key}-") else value


def bids_name(entities: Mapping[str, str | None], suffix: str, extension: str = "") -> str:
    """Build a BIDS file name: ``<key>-<label>_..._<suffix><extension>``.

    The one place where the package spells a BIDS file name, so the simulated
    dataset's writer and every reader agree (:func:`parse_bids_name` takes it
    apart again).

    Parameters
    ----------
    entities : mapping of str to str or None
        Entities in the order they are written (BIDS fixes it: ``sub``,
        ``ses``, ..., ``space``, ..., ``desc``). A label may carry its
        ``<key>-`` prefix already (``"sub-01"``, as in :class:`BidsDwi`); a
        None label leaves the entity out (a dataset without sessions).
    suffix : str
        ``"dwi"``, ``"mask"``, ...
    extension : str
        ``".nii.gz"``, ``".json"``, ... (default: none).

    Returns
    -------
    str

    Examples
    --------
    >>> bids_name({"sub": "01", "ses": None, "space": "dwi", "desc": "brain"}, "mask", ".nii.gz")
    'sub-01_space-dwi_desc-brain_mask.nii.gz'
    """
    parts = [f"{key}-{_label(key, label)}" for key, label in entities.items() if label is not None]
    return "_".join([*parts, suffix]) + extension


def _entity_test(key: str, wanted: EntityFilter) -> Callable[[str | None], bool] | None:
    """The predicate on an entity's label (None: absent) that an :data:`EntityFilter` stands for."""
    if wanted is None:
        return None
    if callable(wanted):
        return wanted
    if isinstance(wanted, str):
        label = _label(key, wanted)
        return lambda value: value == label
    labels = {None if w is None else _label(key, w) for w in wanted}
    return lambda value: value in labels


def bids_files(
    folder: str | os.PathLike,
    *,
    subject: EntityFilter = None,
    session: EntityFilter = None,
    suffix: str | None = None,
    extensions: Sequence[str] = _NIFTI_SUFFIXES,
    recursive: bool = False,
    **entities: EntityFilter,
) -> list[Path]:
    """Files of a BIDS folder whose name has the given entities, suffix and extension.

    Every name is parsed once (:func:`parse_bids_name`) and compared entity
    by entity, as nilearn's ``get_bids_files`` does; the package's BIDS
    readers (:func:`find_bids_dwi`, :mod:`dmrilib.study`,
    :mod:`dmrilib.groundtruth.bids`, :mod:`dmrilib.evaluation`) all look up
    files here.

    Parameters
    ----------
    folder : path-like
        Folder to list; a missing folder has no files.
    subject, session : EntityFilter
        Filters on the ``sub`` and ``ses`` entities (a label may carry its
        ``sub-``/``ses-`` prefix). None (default) admits any value or none.
    suffix : str, optional
        The suffix the name must end with (``"dwi"``, ``"mask"``).
    extensions : sequence of str
        Extensions admitted (default ``.nii.gz`` and ``.nii``).
    recursive : bool
        Also list the files of every folder below ``folder``.
    **entities : EntityFilter
        Filters on other entities by key (``desc="brain"``, ``acq="AP"``,
        ``space=("dwi", None)``; ``**{"from": "dwi"}`` for a Python keyword).
        A label admits that value only, a collection any of its values (None
        in it admits names without the entity, ``(None,)`` only those), a
        callable is given the label (None when absent) and decides.

    Returns
    -------
    list of Path
        Sorted by path.

    See Also
    --------
    parse_bids_name, bids_name
    """
    folder = Path(folder)
    tests = {key: _entity_test(key, wanted)
             for key, wanted in {"sub": subject, "ses": session, **entities}.items()}
    tests = {key: test for key, test in tests.items() if test is not None}
    found = []
    for path in folder.glob("**/*" if recursive else "*"):
        name = parse_bids_name(path)
        if name.extension not in extensions or (suffix is not None and name.suffix != suffix):
            continue
        if all(test(name.get(key)) for key, test in tests.items()):
            found.append(path)
    return sorted(found)


# --------------------------------------------------------------------- BIDS datasets


@dataclass(frozen=True)
class BidsDwi:
    """One subject's DWI found in a BIDS dataset.

    Attributes
    ----------
    subject : str
        ``"sub-<label>"``.
    session : str or None
        ``"ses-<label>"``, or None for datasets without sessions.
    dwi, bval, bvec : Path
        The image and its gradient files.
    sidecar : Path or None
        The JSON sidecar when present.
    derivatives : dict of str to Path
        Derivative images found (keys from :data:`DERIVATIVE_KEYS`).
    """

    subject: str
    session: str | None
    dwi: Path
    bval: Path
    bvec: Path
    sidecar: Path | None = None
    derivatives: Mapping[str, Path] = field(default_factory=dict)

    def metadata(self) -> dict:
        """The JSON sidecar's content (empty when there is none)."""
        if self.sidecar is None:
            return {}
        try:
            return json.loads(self.sidecar.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DwiInputError(f"{self.sidecar.name}: not valid JSON ({exc}). Fix or remove the sidecar.") from exc


def _sessions(subject_dir: Path) -> list[str]:
    """The subject's ``ses-*`` folders that hold a ``dwi/`` folder, sorted."""
    return sorted(p.name for p in subject_dir.glob("ses-*") if p.is_dir() and (p / "dwi").is_dir())


def _choose_session(sessions: Sequence[str]) -> str:
    """The default session of a subject: the first whose name contains "pre", else the first."""
    # Pre-operative scans are what the method needs: prefer a name with "pre".
    preferred = [s for s in sessions if "pre" in s.lower()]
    return (preferred or list(sessions))[0]


def read_participants(root: str | Path):
    """Read ``participants.tsv`` of a BIDS dataset.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``participant_id`` (``"sub-<label>"``); empty when the
        file does not exist.

    Raises
    ------
    DwiInputError
        If the table lacks ``participant_id`` or lists a subject twice.
    """
    import pandas as pd

    path = Path(root) / "participants.tsv"
    if not path.is_file():
        return pd.DataFrame(index=pd.Index([], name="participant_id"))
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DwiInputError(f"{path.name}: cannot be read as a tab-separated table ({exc}).") from exc
    if "participant_id" not in table.columns:
        raise DwiInputError(
            f"{path.name}: no 'participant_id' column (columns: {list(table.columns)}). "
            "BIDS requires it as the first column, tab-separated."
        )
    for column in table.columns.drop("participant_id"):
        try:  # numeric columns (age, seed) become numbers; "n/a" keeps a column as text
            table[column] = pd.to_numeric(table[column])
        except ValueError:
            pass
    ids = table["participant_id"].map(lambda s: s if s.startswith("sub-") else f"sub-{s}")
    dup = sorted(ids[ids.duplicated()].unique())
    if dup:
        raise DwiInputError(
            f"{path.name}: subject(s) {dup} are listed more than once. Keep one row per subject."
        )
    return table.assign(participant_id=ids).set_index("participant_id")


def _is_followup(session: str | None) -> bool:
    """Whether a ``ses`` label names a follow-up session (``followup``, ``followup2``, ...)."""
    return session is not None and session.startswith("followup")


def _derivative_files(base: Path, subject: str, session: str | None, key: str) -> list[Path]:
    """The images of one :data:`DERIVATIVE_KEYS` entry of a subject under ``derivatives/<pipeline>/<subject>``."""
    wanted = parse_bids_name(DERIVATIVE_KEYS[key])
    # the desc must be the key's own; none at all for the tissue dseg, so desc-tumour_dseg is not it
    desc = wanted.get("desc") or (None,)
    if key == "followup_lesion":
        # drawn on the follow-up scan but stored in the pre-op DWI grid, in any session folder
        return bids_files(base, subject=subject, session=_is_followup, suffix=wanted.suffix, desc=desc,
                          recursive=True)
    folder = base / session / "dwi" if session else base / "dwi"
    label = _label("ses", session) if session else None

    def own_session(ses: str | None) -> bool:
        """The session's own files (any, without sessions); never a follow-up's, those are ``followup_lesion``."""
        return (label is None or ses == label) and not _is_followup(ses)

    return bids_files(folder, subject=subject, suffix=wanted.suffix, desc=desc, session=own_session)


def _find_derivatives(
    root: Path, pipeline: str | None, subject: str, session: str | None
) -> dict[str, Path]:
    """The derivative images of one subject and session, keyed as :data:`DERIVATIVE_KEYS`."""
    if pipeline is None:
        return {}
    base = root / "derivatives" / pipeline / subject
    if not base.is_dir():
        return {}
    prefix = f"{subject}_{session}" if session else subject
    found: dict[str, Path] = {}
    for key, suffix in DERIVATIVE_KEYS.items():
        hits = _derivative_files(base, subject, session, key)
        if len(hits) > 1:
            raise DwiInputError(
                f"{base}: several '{suffix}' images for {prefix}: {[p.name for p in hits]}. "
                "Keep one per subject and session."
            )
        if hits:
            found[key] = hits[0]
    return found


def _dwi_folder(subject_dir: Path, sessions: Sequence[str], session: str | None) -> tuple[str | None, Path] | None:
    """The session a subject is read from and its ``dwi/`` folder; None when ``session`` is not among its sessions."""
    if not sessions:
        return None if session is not None else (None, subject_dir / "dwi")
    if session is None:
        session = _choose_session(sessions)
    elif session not in sessions:
        return None
    return session, subject_dir / session / "dwi"


def _dwi_image(dwi_dir: Path, subject: str, acq: str | None) -> Path | None:
    """The one ``*_dwi.nii[.gz]`` of a dwi/ folder (with ``acq``), None without; several are an error."""
    images = bids_files(dwi_dir, suffix="dwi", acq=acq)
    if len(images) > 1:
        raise DwiInputError(
            f"{dwi_dir}: {len(images)} DWI series for {subject}: {[p.name for p in images]}. "
            "Choose one with acquisition='<label>' (the acq- entity; prepare.acquisition in a profile), "
            "or remove the others."
        )
    return images[0] if images else None


def _bids_dwi(root: Path, pipeline: str | None, subject: str, session: str | None, dwi: Path) -> BidsDwi:
    """A found DWI with its gradient files (required), sidecar and derivatives."""
    bval, bvec = _sidecar(dwi, ".bval"), _sidecar(dwi, ".bvec")
    for grad in (bval, bvec):
        if not grad.is_file():
            raise DwiInputError(
                f"{grad}: missing; {dwi.name} needs its {grad.suffix} file beside it with the "
                "same name (BIDS inheritance from the dataset root is not supported)."
            )
    sidecar = _sidecar(dwi, ".json")
    return BidsDwi(
        subject=subject,
        session=session,
        dwi=dwi,
        bval=bval,
        bvec=bvec,
        sidecar=sidecar if sidecar.is_file() else None,
        derivatives=_find_derivatives(root, pipeline, subject, session),
    )


def _check_found(root: Path, session: str | None, acq: str | None, found: Sequence[BidsDwi],
                 missing_session: Sequence[str]) -> None:
    """Raise for subjects without the requested session, or for a dataset where no DWI was found."""
    if missing_session:
        raise DwiInputError(
            f"{root.name}: session '{session}' not found for {list(missing_session)}. Pick a session all "
            "subjects have, or leave session unset to take each subject's pre-operative one."
        )
    if not found:
        raise DwiInputError(
            f"{root}: no diffusion data found (expected sub-*/[ses-*/]dwi/*_dwi.nii[.gz]"
            + (f" with {acq}" if acq else "")
            + "). Check that this is the root of a BIDS dataset with a dwi/ folder per subject."
        )


def find_bids_dwi(
    root: str | Path,
    *,
    session: str | None = None,
    pipeline: str | None = "simulation",
    acquisition: str | None = None,
) -> list[BidsDwi]:
    """Find one DWI per subject in a BIDS dataset.

    Looks for ``sub-*/[ses-*/]dwi/*_dwi.nii[.gz]`` with ``.bval``/``.bvec``
    (and optional ``.json``) beside each image, and derivative masks under
    ``derivatives/<pipeline>/``.

    Parameters
    ----------
    root : path-like
        Dataset root (holds ``dataset_description.json``).
    session : str, optional
        Session to use, with or without the ``ses-`` prefix. Default: per
        subject, the first session (sorted) whose name contains "pre", else
        the first session. Datasets without sessions are supported.
    pipeline : str or None
        Derivatives pipeline folder to search for masks (default
        ``"simulation"``); None skips derivatives.
    acquisition : str, optional
        Keep only files with this ``acq-`` entity, for datasets with several
        DWI series per session.

    Returns
    -------
    list of BidsDwi
        Sorted by subject.

    Raises
    ------
    DwiInputError
        If the folder holds no DWI, a subject has several DWI series that
        ``acquisition`` does not separate, a requested session is missing, a
        gradient file is missing, or ``participants.tsv`` repeats a subject.
    """
    root = Path(root)
    if not root.is_dir():
        raise DwiInputError(f"{root}: no such folder. Pass the root of a BIDS dataset.")
    read_participants(root)  # validates participants.tsv (duplicates) early
    if session is not None and not session.startswith("ses-"):
        session = f"ses-{session}"
    acq = None if acquisition is None else (acquisition if acquisition.startswith("acq-") else f"acq-{acquisition}")
    found: list[BidsDwi] = []
    missing_session: list[str] = []
    for subject_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        sessions = _sessions(subject_dir)
        if not sessions and not (subject_dir / "dwi").is_dir():
            continue  # no diffusion data at all (e.g. anat only)
        chosen = _dwi_folder(subject_dir, sessions, session)
        if chosen is None:
            missing_session.append(subject_dir.name)
            continue
        ses, dwi_dir = chosen
        dwi = _dwi_image(dwi_dir, subject_dir.name, acq)
        if dwi is not None:
            found.append(_bids_dwi(root, pipeline, subject_dir.name, ses, dwi))
    _check_found(root, session, acq, found, missing_session)
    return found
