"""Reading diffusion MRI: 4D NIfTI + FSL ``.bval``/``.bvec`` files and BIDS folders.

This is the entry point for every dMRI input, simulated or real. All reading
goes through :func:`inspect_dwi` (header and gradients) and :func:`load_dwi`
(voxel data), which validate the input once and raise :class:`DwiInputError`
with a message naming the file, the problem and what to do.

Shell selection keeps the b0 volumes (``b <= b0_threshold``) and one target
shell (``|b - target_bvalue| <= bvalue_tolerance``), so multi-shell data such
as OpenNeuro ds001226 (b = 700/1200/2800) can be reduced to the single-shell
input the models expect.

BIDS file names are taken apart by one parser (:func:`parse_bids_name`),
built by one function (:func:`bids_name`, also used by the simulator's
writer) and looked up by one lister (:func:`bids_files`), which every BIDS
reader of the package uses.

Import from ``dmrilib.io``; the code lives in three modules by concern:
:mod:`~dmrilib.io.nifti` (NIfTI + gradients, shells, masks),
:mod:`~dmrilib.io.bids` (names, lister, :func:`find_bids_dwi`, participants) and
:mod:`~dmrilib.io.describe` (``dmri describe`` / ``dmri check``).
"""
from __future__ import annotations

from dmrilib.io.bids import (DERIVATIVE_KEYS, BidsDwi, BidsName, bids_files, bids_name, find_bids_dwi,
                              parse_bids_name, read_participants)
from dmrilib.io.describe import InputReport, check_input, describe
from dmrilib.io.nifti import (DwiHeader, DwiInputError, DwiVolume, inspect_dwi, load_dwi, load_labels, load_mask,
                              select_shell, shells)

__all__ = [
    "DwiInputError",
    "DwiHeader",
    "DwiVolume",
    "BidsDwi",
    "BidsName",
    "DERIVATIVE_KEYS",
    "inspect_dwi",
    "load_dwi",
    "select_shell",
    "shells",
    "load_mask",
    "load_labels",
    "find_bids_dwi",
    "parse_bids_name",
    "bids_name",
    "bids_files",
    "read_participants",
    "describe",
    "check_input",
    "InputReport",
]
