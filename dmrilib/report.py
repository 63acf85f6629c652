"""Helpers for the book: locate results, banners, formatted and comparison tables.

The book's pages only read result files written by the workflow; these
functions turn them into what a reader sees. Published numbers enter only
through :mod:`dmrilib.published` and are labelled as the paper's.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dmrilib.config import Profile, load_profile
from dmrilib.published import DAE_INDEX, RECDISC_INDEX, paper_table

__all__ = [
    "BookContext",
    "book_context",
    "banner",
    "fmt_pm",
    "fmt_ci",
    "comparison_auroc",
    "comparison_dice",
    "MODEL_NAMES",
    "RULE_NAMES",
]

MODEL_NAMES = {"dae": "DAE", "recdisc": "RecDiscNet", "baseline": "Normative DTI baseline"}
RULE_NAMES = {
    "fixed": "fixed",
    "otsu": "Otsu",
    "pool_max": "pooled maximum",
    "youden": "Youden (supervised)",
    "dice_optimal": "Dice-optimal (oracle)",
}


@dataclass(frozen=True)
class BookContext:
    """Which profile the book shows and where its results are."""

    profile: Profile
    root: Path  # results/<profile>

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    def table(self, name: str) -> pd.DataFrame:
        path = self.tables_dir / f"{name}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `make book PROFILE={self.profile.name}` to compute it.")
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def json(self, relpath: str) -> dict:
        return json.loads((self.root / relpath).read_text())

    def figure_path(self, name: str) -> Path:
        path = self.figures_dir / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the figures job of profile {self.profile.name!r}.")
        return path


def book_context(profile: str | None = None, results: str | Path | None = None) -> BookContext:
    """Resolve the profile (``DMRI_PROFILE``, default ``quick``) and its results folder.

    The results root comes from ``DMRI_RESULTS`` or is the first ``results/``
    folder found from the working directory upwards (book pages run inside
    ``book/``).
    """
    name = profile or os.environ.get("DMRI_PROFILE", "quick")
    prof = load_profile(name)
    if results is None and os.environ.get("DMRI_RESULTS"):
        results = os.environ["DMRI_RESULTS"]
    if results is None:
        here = Path.cwd().resolve()
        for folder in (here, *here.parents):
            if (folder / "results" / prof.name).is_dir():
                results = folder / "results"
                break
        else:
            raise FileNotFoundError(
                f"no results/{prof.name} folder above {here}; run `make book PROFILE={prof.name}` first."
            )
    root = Path(results) / prof.name
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no results for profile {prof.name!r}; run `make book PROFILE={prof.name}`.")
    return BookContext(prof, root)


def banner(ctx: BookContext) -> str:
    """MyST admonition stating that the data are simulated and which profile made the numbers."""
    p = ctx.profile
    protocol = ("the paper's full protocol" if p.name == "paper"
                else f"a reduced profile, **not** the paper's protocol ({p.description.strip()})")
    return (
        ":::{important}\n"
        "**Simulated data.** Every number and image on this page comes from a *simulated* cohort "
        "(real MNI152 anatomy, a real 64-direction gradient scheme, synthetic gliomas with known "
        "ground truth), not from the paper's private patients.\n\n"
        f"Profile **`{p.name}`** (hash `{p.hash()}`, seed {p.seed}): {protocol}\n"
        ":::\n"
    )


def fmt_pm(mean: float, sd: float, digits: int = 3) -> str:
    """``"0.812 ± 0.110"``; an empty string for missing values."""
    if pd.isna(mean):
        return ""
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if not pd.isna(sd) else f"{mean:.{digits}f}"


def fmt_ci(low: float, high: float, digits: int = 3) -> str:
    """``"[0.781, 0.840]"``; an empty string for missing values."""
    if pd.isna(low) or pd.isna(high):
        return ""
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def comparison_auroc(ours: pd.DataFrame, model: str) -> pd.DataFrame:
    """The paper's Table 1 (``dae``) or 2 (``recdisc``) beside ours, row by row.

    Parameters
    ----------
    ours : DataFrame
        Our ``table1``/``table2`` (columns ``variant, auroc_mean, auroc_sd, ci_low, ci_high``).
    model : {"dae", "recdisc"}

    Returns
    -------
    DataFrame
        One row per paper configuration, in the paper's order: paper index,
        variant, the paper's AUROC, ours (mean ± sd, 95% CI), and the
        difference ours − paper. Variants the profile did not run show blanks.
    """
    paper = paper_table("table1" if model == "dae" else "table2")
    merged = paper.merge(ours, on="variant", how="left", suffixes=("_paper", ""))
    label = "m" if model == "dae" else "d"
    return pd.DataFrame({
        f"paper {label}": merged["index"],
        "configuration": merged["variant"],
        "AUROC (paper)": [fmt_pm(m, s) for m, s in zip(merged["auroc_mean_paper"], merged["auroc_sd_paper"])],
        "AUROC (ours)": [fmt_pm(m, s) for m, s in zip(merged["auroc_mean"], merged["auroc_sd"])],
        "ours, 95% CI": [fmt_ci(lo, hi) for lo, hi in zip(merged["ci_low"], merged["ci_high"])],
        "ours − paper": (merged["auroc_mean"] - merged["auroc_mean_paper"]).round(3),
    })


def comparison_dice(ours: pd.DataFrame, table: str) -> pd.DataFrame:
    """The paper's Table 3, 4, 5 or 6 beside ours (best configuration per model).

    Parameters
    ----------
    ours : DataFrame
        Our ``table3``..``table6`` (columns ``model, variant, threshold,
        dice_mean, dice_sd, dice_post_mean, dice_post_sd, ...``).
    table : {"table3", "table4", "table5", "table6"}
    """
    paper = paper_table(table)
    rows = []
    for _, p in paper.iterrows():
        o = ours[ours["model"] == p["model"]]
        o = o.iloc[0] if len(o) else None
        index = (DAE_INDEX if p["model"] == "dae" else RECDISC_INDEX)
        rows.append({
            "network": MODEL_NAMES[p["model"]],
            "configuration (paper)": f"{p['variant']} ({'m' if p['model'] == 'dae' else 'd'}={p['index']})",
            "configuration (ours)": "" if o is None else (
                f"{o['variant']} ({'m' if p['model'] == 'dae' else 'd'}={index.get(o['variant'], '?')})"),
            "threshold (paper)": f"{p['threshold']:.2f}",
            "threshold (ours)": "" if o is None else f"{o['threshold']:.2f}",
            "Dice (paper)": fmt_pm(p["dice_mean"], p["dice_sd"]),
            "Dice (ours)": "" if o is None else fmt_pm(o["dice_mean"], o["dice_sd"]),
            "Dice post (paper)": fmt_pm(p["dice_post_mean"], p["dice_post_sd"]),
            "Dice post (ours)": "" if o is None else fmt_pm(o["dice_post_mean"], o["dice_post_sd"]),
            "Δ Dice post (ours − paper)": None if o is None else round(o["dice_post_mean"] - p["dice_post_mean"], 3),
        })
    return pd.DataFrame(rows)
