"""Numbers published by Weninger, Ecke et al., Sci Rep 2023 (doi:10.1038/s41598-023-47563-1).

These values are the paper's, transcribed from its Tables 1-6 and its text.
They are used only for the side-by-side comparison in the book and are always
labelled as the paper's; nothing in the pipeline reads them.

Each table is a list of plain dicts keyed by our variant ids (see
``ARCHITECTURE.md``), so a published row can be joined to ours.

The paper's *protocol* (what its text says about training, disturbances,
maps and evaluation, where it differs from or is silent beside the authors'
code) is not here but in :data:`dmrilib.fidelity.DIFFERENCES` (``paper_says``),
next to the value each side uses.
"""
from __future__ import annotations

import pandas as pd

from dmrilib.variants import DAE, RECDISC

__all__ = [
    "CITATION",
    "DOI",
    "PAPER_TABLES",
    "DAE_INDEX",
    "RECDISC_INDEX",
    "FOLLOWUP_MISMATCHES",
    "paper_table",
]

DOI = "10.1038/s41598-023-47563-1"
CITATION = (
    "Weninger L, Ecke J, Jütten K, Clusmann H, Wiesmann M, Merhof D, Na C-H. "
    "Diffusion MRI anomaly detection in glioma patients. Sci Rep 13, 20366 (2023). "
    f"https://doi.org/{DOI}"
)

# Table 1 rows: index m, variant id, AUROC mean, sd (sorted by AUROC as printed).
_TABLE1 = [
    (1, "lsd256-linear", 0.739, 0.12),
    (2, "lsd64-linear", 0.765, 0.11),
    (3, "lsd128-linear", 0.765, 0.11),
    (4, "lsd32-linear", 0.771, 0.11),
    (5, "lsd16-linear", 0.779, 0.11),
    (6, "lsd512-linear", 0.793, 0.11),
    (7, "lsd128-sigmoid", 0.803, 0.12),
    (8, "lsd64-sigmoid", 0.804, 0.12),
    (9, "lsd16-sigmoid", 0.804, 0.12),
    (10, "lsd32-sigmoid", 0.808, 0.11),
    (11, "lsd256-sigmoid", 0.818, 0.11),
    (12, "lsd512-sigmoid", 0.820, 0.11),
]

# Table 2 rows: index d, variant id, AUROC mean, sd.
_TABLE2 = [
    (1, "normal-directional-full", 0.550, 0.18),
    (2, "uniform-directional-full", 0.565, 0.19),
    (3, "uniform-random-full", 0.568, 0.18),
    (4, "normal-random-full", 0.594, 0.20),
    (5, "mix-mix-full", 0.660, 0.21),
    (6, "uniform-random-half", 0.673, 0.17),
    (7, "uniform-directional-half", 0.680, 0.16),
    (8, "normal-random-half", 0.693, 0.15),
    (9, "uniform-isotropic-full", 0.700, 0.15),
    (10, "uniform-isotropic-half", 0.761, 0.16),
    (11, "normal-directional-half", 0.763, 0.14),
    (12, "mix-mix-half", 0.772, 0.17),
]

#: Paper index (m of Table 1) of each DAE variant.
DAE_INDEX = {v: i for i, v, _, _ in _TABLE1}
#: Paper index (d of Table 2) of each RecDiscNet variant.
RECDISC_INDEX = {v: i for i, v, _, _ in _TABLE2}

# Tables 3-6: the best configuration per model under one threshold rule.
# (table, rule, model, paper index, threshold, dice mean, sd, dice post mean, sd)
_DICE_TABLES = [
    (3, "fixed", DAE, 4, 0.30, 0.168, 0.11, 0.431, 0.19),
    (3, "fixed", RECDISC, 10, 0.50, 0.603, 0.24, 0.599, 0.25),
    (4, "otsu", DAE, 4, 0.18, 0.195, 0.13, 0.501, 0.20),
    (4, "otsu", RECDISC, 10, 0.50, 0.603, 0.24, 0.598, 0.25),
    (5, "pool_max", DAE, 11, 0.36, 0.230, 0.18, 0.483, 0.24),
    (5, "pool_max", RECDISC, 10, 0.31, 0.616, 0.24, 0.624, 0.24),
    (6, "dice_optimal", DAE, 12, 0.49, 0.375, 0.18, 0.519, 0.18),
    (6, "dice_optimal", RECDISC, 12, 0.23, 0.657, 0.23, 0.660, 0.24),
]

_INDEX_TO_VARIANT = {
    DAE: {i: v for v, i in DAE_INDEX.items()},
    RECDISC: {i: v for v, i in RECDISC_INDEX.items()},
}

#: Visual follow-up reading of the paper (Results, last section): per grade,
#: patients with diffusion-anomalous regions outside the pre-operative FLAIR
#: lesion, and how many of those overlapped follow-up lesions.
FOLLOWUP_MISMATCHES = {
    "IV": {"patients": 14, "mismatch": 11, "overlap_followup": 9},
    "III": {"patients": 10, "mismatch": 5, "overlap_followup": 3},
    "II": {"patients": 8, "mismatch": 0, "overlap_followup": 0},
}

PAPER_TABLES = {
    "table1": [
        {"model": DAE, "index": i, "variant": v, "auroc_mean": m, "auroc_sd": s}
        for i, v, m, s in _TABLE1
    ],
    "table2": [
        {"model": RECDISC, "index": i, "variant": v, "auroc_mean": m, "auroc_sd": s}
        for i, v, m, s in _TABLE2
    ],
    **{
        f"table{t}": [
            {
                "model": model, "rule": rule, "index": idx,
                "variant": _INDEX_TO_VARIANT[model][idx], "threshold": thr,
                "dice_mean": d, "dice_sd": ds, "dice_post_mean": p, "dice_post_sd": ps,
            }
            for tt, rule, model, idx, thr, d, ds, p, ps in _DICE_TABLES
            if tt == t
        ]
        for t in (3, 4, 5, 6)
    },
}


def paper_table(name: str) -> pd.DataFrame:
    """One of the paper's tables (``"table1"`` ... ``"table6"``) as a DataFrame."""
    if name not in PAPER_TABLES:
        raise KeyError(f"unknown table {name!r}; available: {sorted(PAPER_TABLES)}")
    return pd.DataFrame(PAPER_TABLES[name])
