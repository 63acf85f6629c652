"""Helpers for the book: locate results, banners, formatted and comparison tables.

The book's pages only read result files written by the workflow; these
functions turn them into what a reader sees. Published numbers enter only
through :mod:`dmrilib.published` and are labelled as the paper's.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from dmrilib.config import Profile, load_profile
from dmrilib.layout import RESULTS, ResultsLayout
from dmrilib.published import DAE_INDEX, FOLLOWUP_MISMATCHES, RECDISC_INDEX, paper_table
from dmrilib.variants import BASELINE, DAE, DISPLAY_NAMES, MODELS, RECDISC

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler

    from dmrilib.metrics import EvalConfig

__all__ = [
    "BookContext",
    "book_context",
    "banner",
    "fmt_pm",
    "fmt_ci",
    "comparison_auroc",
    "comparison_dice",
    "style_table",
    "style_scorecard",
    "findings_scorecard",
    "opening_limits",
    "differences_table",
    "style_differences",
    "style_compact",
    "ablation_summary",
    "style_ablation",
    "study_subjects",
    "study_scores",
    "SCORECARD_COLUMNS",
    "VERDICTS",
    "MODEL_NAMES",
    "RULE_NAMES",
]

#: Display names per model (an alias of :data:`dmrilib.variants.DISPLAY_NAMES`).
MODEL_NAMES = DISPLAY_NAMES
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
    def layout(self) -> ResultsLayout:
        """Every path of the build (:class:`dmrilib.layout.ResultsLayout` of :attr:`root`)."""
        return ResultsLayout(self.root)

    @property
    def tables_dir(self) -> Path:
        return self.layout.tables

    @property
    def figures_dir(self) -> Path:
        return self.layout.figures

    def table(self, name: str) -> pd.DataFrame:
        path = self.layout.table(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `make book PROFILE={self.profile.name}` to compute it.")
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table of the build (:func:`dmrilib.pipeline.load_tables`), by name."""
        from dmrilib.pipeline import load_tables

        return load_tables(self.profile, self.root.parent)

    def json(self, relpath: str | os.PathLike) -> dict:
        """A JSON file of the build: a path relative to :attr:`root`, or one of :attr:`layout`'s."""
        return json.loads((self.root / relpath).read_text())

    @property
    def study(self) -> dict | None:
        """``cohort/study.json`` when the build ran on the user's BIDS dataset, else None (simulated)."""
        from dmrilib.study import read_study

        return read_study(self.layout.cohort)

    def figure_path(self, name: str) -> Path:
        path = self.layout.figure(name)
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
            if ResultsLayout.of(prof, folder / RESULTS).root.is_dir():
                results = folder / RESULTS
                break
        else:
            raise FileNotFoundError(
                f"no results/{prof.name} folder above {here}; run `make book PROFILE={prof.name}` first."
            )
    root = ResultsLayout.of(prof, results).root
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no results for profile {prof.name!r}; run `make book PROFILE={prof.name}`.")
    return BookContext(prof, root)


def banner(ctx: BookContext) -> str:
    """MyST admonition saying whose data these are (simulated, or the user's dataset) and which profile ran."""
    p = ctx.profile
    protocol = ("the paper's full protocol" if p.name == "paper"
                else f"a reduced profile, **not** the paper's protocol ({p.description.strip()})")
    study = ctx.study
    if study is not None:
        patients = [s for s in study["subjects"] if s["group"] == "patient"]
        scored = "" if study["scored"] else (
            "\n\n**Nothing is scored:** no patient has a lesion mask, so this build shows anomaly maps only "
            "(no AUROC, no Dice).")
        return (
            ":::{important}\n"
            f"**Your data: {study['dataset']['name']}.** Every number and image on this page comes from this "
            f"BIDS dataset ({len(study['subjects']) - len(patients)} controls, {len(patients)} patients, read from "
            f"`{study['dataset']['root']}`), not from simulated subjects and not from the paper's patients."
            f"{scored}\n\n"
            f"Profile **`{p.name}`** (hash `{p.hash()}`, seed {p.seed}).\n"
            ":::\n"
        )
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
    paper = paper_table("table1" if model == DAE else "table2")
    merged = paper.merge(ours, on="variant", how="left", suffixes=("_paper", ""))
    label = "m" if model == DAE else "d"
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
        index = (DAE_INDEX if p["model"] == DAE else RECDISC_INDEX)
        rows.append({
            "network": MODEL_NAMES[p["model"]],
            "configuration (paper)": f"{p['variant']} ({'m' if p['model'] == DAE else 'd'}={p['index']})",
            "configuration (ours)": "" if o is None else (
                f"{o['variant']} ({'m' if p['model'] == DAE else 'd'}={index.get(o['variant'], '?')})"),
            "threshold (paper)": f"{p['threshold']:.2f}",
            "threshold (ours)": "" if o is None else f"{o['threshold']:.2f}",
            "Dice (paper)": fmt_pm(p["dice_mean"], p["dice_sd"]),
            "Dice (ours)": "" if o is None else fmt_pm(o["dice_mean"], o["dice_sd"]),
            "Dice post (paper)": fmt_pm(p["dice_post_mean"], p["dice_post_sd"]),
            "Dice post (ours)": "" if o is None else fmt_pm(o["dice_post_mean"], o["dice_post_sd"]),
            "Δ Dice post (ours − paper)": None if o is None else round(o["dice_post_mean"] - p["dice_post_mean"], 3),
        })
    return pd.DataFrame(rows)


def style_table(df: pd.DataFrame, *, wrap: Iterable[str] = (), precision: int = 3) -> "Styler":
    """A table as the book shows it: no index column, ``precision`` digits, blanks for NaN.

    Value cells never break inside a value (``book/_static/tables.css`` sets
    ``white-space: nowrap`` on table cells and lets a wide table scroll
    sideways); the columns named in ``wrap`` hold prose and wrap at word
    boundaries instead, within a readable width. A table without such
    columns that is wider than the page (~1400 px window) even with its
    headers wrapped keeps its natural width, headers on one line, and scrolls.
    """
    styler = df.style.hide(axis="index").format(precision=precision, na_rep="")
    prose = [c for c in wrap if c in df.columns]
    if prose:
        styler = styler.set_properties(subset=prose, **{"white-space": "normal", "min-width": "8em",
                                                        "max-width": "32em"})
    elif _min_width_em(df, precision) > _PAGE_EM:
        # it scrolls however its headers wrap: at its natural width, with
        # headers on one line, not squeezed to one word a line
        styler = styler.set_table_styles([{"selector": "", "props": "width: max-content;"}], overwrite=False)
    return styler


#: Text width of a book page at ~1400 px (sphinx-book-theme: 772 px of 16 px text) and
#: the mean width of a character, in em: what :func:`style_table` assumes.
_PAGE_EM, _CHAR_EM = 48.0, 0.55


def _min_width_em(df: pd.DataFrame, precision: int) -> float:
    """Estimated width of ``df`` with every header wrapped at its spaces and values unbroken."""
    total = 0.0
    for col in df.columns:
        header = max((len(w) for w in str(col).split()), default=0)
        cells = (("" if pd.isna(v) else f"{v:.{precision}f}" if isinstance(v, float) else str(v))
                 for v in df[col])
        total += max([header, *(len(c) for c in cells)]) * _CHAR_EM + 1.0  # + padding
    return total


#: Background of each verdict in :func:`style_scorecard` (light, so the text stays readable).
_VERDICT_COLOURS = {"holds": "#dff0d8", "does not hold": "#f2dede", "inconclusive": "#fcf8e3",
                    "not testable": "#eeeeee"}


def _lines(text: str) -> str:
    """HTML of a comparison cell: one line per side ("A<br>vs B"), values unbroken."""
    return html.escape(str(text)).replace(" vs ", "<br>vs ").replace("; ", "<br>")


def style_scorecard(card: pd.DataFrame) -> "Styler":
    """:func:`findings_scorecard` as the book shows it.

    Claim and note wrap; each side of a comparison gets its own line, so the
    table fits a page at ~1400 px; verdicts are tinted.
    """
    return (style_table(card, wrap=["claim", "note"])
            .set_table_styles([{"selector": "", "props": "font-size: 0.9em;"}], overwrite=False)
            .format(_lines, subset=["paper", "this build"])
            .map(lambda v: f"background-color: {_VERDICT_COLOURS[v]}" if v in _VERDICT_COLOURS else "",
                 subset=["verdict"]))


# --------------------------------------------------------------------------- findings scorecard

#: Columns of :func:`findings_scorecard`.
SCORECARD_COLUMNS = ("claim", "paper", "this build", "verdict", "note")
#: Verdicts of :func:`findings_scorecard`: the first three from intervals over
#: patients, the last where the build cannot test the claim.
VERDICTS = ("holds", "does not hold", "inconclusive", "not testable")

_LSD_RE = re.compile(r"^lsd(?P<lsd>\d+)-(?P<activation>linear|sigmoid)$")
_PAIR_RE = re.compile(r"^(?P<pair>[a-z]+-[a-z]+)-(?P<mean>full|half)$")
#: The paper's Tables 3-6, whose rows are the best configuration of each model under one rule.
_DICE_TABLES = ("table3", "table4", "table5", "table6")


@dataclass(frozen=True)
class _Estimate:
    """A mean with its bootstrap interval over patients."""

    mean: float
    low: float
    high: float

    @property
    def missing(self) -> bool:
        return any(pd.isna(v) for v in (self.mean, self.low, self.high))

    def __str__(self) -> str:
        # no-break spaces: a table cell may wrap between estimates, never inside one
        if self.missing:
            return ""
        mean, low, high = (f"{v:.3f}".replace("-0.000", "0.000") for v in (self.mean, self.low, self.high))
        return f"{mean}\u00a0[{low},\u00a0{high}]"


def _estimate(row: Mapping, prefix: str) -> _Estimate:
    """From a table row with ``<prefix>_mean`` (or ``<prefix>``), ``ci_low``/``ci_high`` columns."""
    if f"{prefix}_ci_low" in row:
        return _Estimate(row[f"{prefix}_mean"], row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"])
    return _Estimate(row[f"{prefix}_mean"], row["ci_low"], row["ci_high"])


def _order(a: _Estimate, b: _Estimate, level: str) -> tuple[str, str]:
    """Verdict on "a above b": intervals apart decide, overlapping ones do not."""
    if a.missing or b.missing:
        return "not testable", "no interval: too few patients"
    if a.low > b.high:
        return "holds", ""
    if a.high < b.low:
        return "does not hold", ""
    side = ("in the paper's direction" if a.mean > b.mean
            else "against the paper's direction" if a.mean < b.mean else "equal")
    return "inconclusive", f"{level} intervals overlap (means {side})"


def _above(a: _Estimate, value: float, level: str) -> tuple[str, str]:
    """Verdict on "a above value"."""
    if a.missing:
        return "not testable", "no interval: too few patients"
    if a.low > value:
        return "holds", ""
    if a.high < value:
        return "does not hold", ""
    return "inconclusive", f"the {level} interval contains {value:g}"


def opening_limits(voxel_mm: float, opening_size: int) -> dict[str, str]:
    """What a cubic opening of ``opening_size`` voxels of ``voxel_mm`` mm removes from the simulated lesions.

    The opening keeps a flagged voxel only inside a whole ``n^3`` block of
    flagged voxels (``n = opening_size``). Wherever a ball lies on the grid,
    it holds such a block only when its diameter is at least the diagonal of
    a cube of side ``n * voxel_mm``; a rim holds one only when it is at least
    ``n * voxel_mm`` thick. So once that diagonal exceeds the nominal
    diameter of the small simulated lesions
    (:data:`dmrilib.simulate.lesion.SIZE_RADII_MM`), the opening can remove a
    small lesion however well it is detected, and once the side exceeds the
    thinnest infiltration margin (:data:`~dmrilib.simulate.lesion.GRADE_PARAMS`),
    a flagged region outside the lesion survives only where attached to it.

    Returns
    -------
    dict
        ``"lesion"`` and/or ``"margin"`` -> a sentence saying why; empty on a
        grid fine enough (the paper's 3^3 at 2.4 mm: 12.5 mm diagonal, 20 mm
        small lesions), and empty when the opening is off (``opening_size`` 0 or 1).
    """
    return {key: long for key, (_, long) in _opening_checks(voxel_mm, opening_size).items()}


def _opening_checks(voxel_mm: float, opening_size: int) -> dict[str, tuple[str, str]]:
    """:func:`opening_limits` as (short note for the scorecard, sentence for the page)."""
    from dmrilib.simulate.lesion import GRADE_PARAMS, SIZE_RADII_MM

    if opening_size <= 1:
        return {}
    side = opening_size * float(voxel_mm)
    diagonal = side * math.sqrt(3.0)
    small = 2.0 * min(SIZE_RADII_MM.values())
    margin = min(p["infiltration_mm"] for p in GRADE_PARAMS.values())
    element = f"a {opening_size}³ opening at {voxel_mm:g} mm ({side:.1f} mm cube)"
    out = {}
    if diagonal > small:
        out["lesion"] = (
            f"grid too coarse: {element} can remove small lesions ({diagonal:.1f} mm diagonal > {small:g} mm)",
            f"{element} can remove small lesions even when detected perfectly: depending on where one "
            f"lies on the grid, a ball of their nominal diameter ({small:g} mm) need not hold a whole "
            f"{opening_size}³ block of voxels (that takes the cube's diagonal, {diagonal:.1f} mm)")
    if side > margin:
        out["margin"] = (
            f"grid too coarse: {element} is wider than the thinnest infiltration margin ({margin:g} mm)",
            f"{element} is wider than the thinnest simulated infiltration margin ({margin:g} mm): "
            "a flagged region outside the lesion survives it only where attached to the lesion")
    return out


def _row(claim: str, paper: str, build: str, verdict: str, note: str = "") -> dict[str, str]:
    return dict(zip(SCORECARD_COLUMNS, (claim, paper, build, verdict, note)))


def _untestable(row: dict[str, str], reason: str) -> dict[str, str]:
    """The same comparison, marked as one this build cannot test, with what it measured."""
    measured = {"holds": "measured in the paper's direction", "does not hold": "measured against it",
                "inconclusive": "measured: inconclusive", "not testable": ""}[row["verdict"]]
    return {**row, "verdict": "not testable", "note": "; ".join(n for n in (reason, measured) if n)}


def _table(tables: Mapping[str, pd.DataFrame], name: str) -> pd.DataFrame:
    t = tables.get(name)
    return t if t is not None else pd.DataFrame()


def _claim_auroc_order(tables, level) -> list[dict]:
    claim = "1. DAE AUROC above RecDiscNet's (best configuration of each)"
    t1, t2 = _table(tables, "table1"), _table(tables, "table2")
    p1, p2 = paper_table("table1"), paper_table("table2")
    pb1, pb2 = p1.loc[p1["auroc_mean"].idxmax()], p2.loc[p2["auroc_mean"].idxmax()]
    paper = f"{pb1['auroc_mean']:.3f} vs {pb2['auroc_mean']:.3f}"
    if t1.empty or t2.empty:
        return [_row(claim, paper, "", "not testable", "no AUROC table of one of the models")]
    b1, b2 = t1.loc[t1["auroc_mean"].idxmax()], t2.loc[t2["auroc_mean"].idxmax()]
    a, b = _estimate(b1, "auroc"), _estimate(b2, "auroc")
    verdict, note = _order(a, b, level)
    best = (f"best: {b1['variant']} vs {b2['variant']} (paper: {pb1['variant']} vs {pb2['variant']}); "
            "the paper: RecDiscNet's AUC is 'lower compared to top performing' DAE models (Table 2)")
    return [_row(claim, paper, f"{a} vs {b}", verdict, "; ".join(n for n in (note, best) if n))]


def _claim_pairs(tables, level, *, model: str) -> list[dict]:
    """Claims 2 (sigmoid above linear per latent size) and 3 (half above full per disturbance)."""
    if model == DAE:
        name, pattern, key, better, worse = "table1", _LSD_RE, "lsd", "sigmoid", "linear"
        title, each = "2. DAE: sigmoid above linear output", "LSD {}"
        what = "latent size with both output activations"
    else:
        name, pattern, key, better, worse = "table2", _PAIR_RE, "pair", "half", "full"
        title, each = "3. RecDiscNet: half above full disturbance mean", "{}"
        what = "distribution/appearance pair with both means"
    part = "activation" if model == DAE else "mean"

    def by_key(t: pd.DataFrame) -> dict[str, dict[str, Mapping]]:
        out: dict[str, dict[str, Mapping]] = {}
        for _, r in t.iterrows():
            m = pattern.match(str(r["variant"]))
            if m:
                out.setdefault(m[key], {})[m[part]] = r
        return out

    ours = by_key(_table(tables, name))
    paper = by_key(paper_table(name))
    keys = [k for k in ours if better in ours[k] and worse in ours[k]]
    keys.sort(key=lambda k: (int(k), k) if k.isdigit() else (0, k))
    if not keys:
        ran = ", ".join(sorted(str(r["variant"]) for v in ours.values() for r in v.values())) or "none"
        return [_row(title, "", "", "not testable",
                     f"this profile runs no {what} (it runs: {ran})")]
    rows = []
    for k in keys:
        a, b = _estimate(ours[k][better], "auroc"), _estimate(ours[k][worse], "auroc")
        p = paper.get(k, {})
        paper_text = (f"{p[better]['auroc_mean']:.3f} vs {p[worse]['auroc_mean']:.3f}"
                      if better in p and worse in p else "")
        rows.append(_row(f"{title}, {each.format(k)}", paper_text, f"{a} vs {b}", *_order(a, b, level)))
    return rows


def _best_rows(t: pd.DataFrame) -> dict[str, Mapping]:
    return {str(r["model"]): r for _, r in t.iterrows()} if len(t) else {}


def _claim_dice_order(tables, level, limits) -> list[dict]:
    rows = []
    for name in _DICE_TABLES:
        paper = _best_rows(paper_table(name))
        rule = RULE_NAMES.get(paper[DAE]["rule"], paper[DAE]["rule"])
        ours = _best_rows(_table(tables, name))
        for col, when in (("dice", "before the opening"), ("dice_post", "after the opening")):
            claim = f"4. RecDiscNet Dice above DAE's, {rule}, {when}"
            paper_text = f"{paper[RECDISC][col + '_mean']:.3f} vs {paper[DAE][col + '_mean']:.3f}"
            if DAE not in ours or RECDISC not in ours:
                rows.append(_row(claim, paper_text, "", "not testable", f"no {name} row of one of the models"))
                continue
            a, b = _estimate(ours[RECDISC], col), _estimate(ours[DAE], col)
            row = _row(claim, paper_text, f"{a} vs {b}", *_order(a, b, level))
            if col == "dice_post" and "lesion" in limits:
                row = _untestable(row, limits["lesion"])
            rows.append(row)
    return rows


def _gain(tables, model: str, variant: str, rule: str, config: "EvalConfig") -> _Estimate:
    """Mean Dice gain of the opening (``dice_post - dice``) with its bootstrap interval over patients."""
    from dmrilib import metrics

    d = _table(tables, "dice_all")
    if d.empty:
        return _Estimate(math.nan, math.nan, math.nan)
    g = d[(d["model"] == model) & (d["variant"] == variant) & (d["rule"] == rule)]
    g = g.assign(gain=g["dice_post"] - g["dice"])
    s = metrics.summarise(g, [], ["gain"], config).iloc[0]
    return _Estimate(s["mean"], s["ci_low"], s["ci_high"])


def _claim_opening(tables, level, limits, config: "EvalConfig") -> list[dict]:
    rows = []
    for name in _DICE_TABLES:
        paper = _best_rows(paper_table(name))
        rule_id = paper[DAE]["rule"]
        claim = f"5. The opening helps the DAE much more than RecDiscNet, {RULE_NAMES.get(rule_id, rule_id)}"
        gain = {m: paper[m]["dice_post_mean"] - paper[m]["dice_mean"] for m in MODELS}
        paper_text = f"gain {gain[DAE]:+.3f} vs {gain[RECDISC]:+.3f}"
        ours = _best_rows(_table(tables, name))
        if config.opening_size <= 1:
            rows.append(_row(claim, paper_text, "", "not testable",
                             "this profile switches the opening off (evaluate.opening_size)"))
            continue
        if DAE not in ours or RECDISC not in ours or _table(tables, "dice_all").empty:
            rows.append(_row(claim, paper_text, "", "not testable", f"no per-patient Dice of {name}'s rows"))
            continue
        a, b = (_gain(tables, m, ours[m]["variant"], rule_id, config) for m in MODELS)
        verdict, note = _order(a, b, level)
        row = _row(claim, paper_text, f"gain {a} vs {b}", verdict,
                   "; ".join(n for n in (note, "'much more': the DAE's interval lies above RecDiscNet's") if n))
        if "lesion" in limits:
            row = _untestable(row, limits["lesion"])
        rows.append(row)
    return rows


def _claim_followup(tables, level, limits, config: "EvalConfig") -> list[dict]:
    from dmrilib import metrics

    p = FOLLOWUP_MISMATCHES
    rate = {g: p[g]["mismatch"] / p[g]["patients"] for g in p}
    claims = {
        "most": ("6. Follow-up mismatches in most WHO IV patients",
                 f"{p['IV']['mismatch']} / {p['IV']['patients']}"),
        "IV>III": ("6. Follow-up mismatches more frequent in WHO IV than III",
                   f"{rate['IV']:.3f} vs {rate['III']:.3f}"),
        "III>II": ("6. Follow-up mismatches more frequent in WHO III than II",
                   f"{rate['III']:.3f} vs {rate['II']:.3f}"),
        "none": ("6. No follow-up mismatch in WHO II", f"{p['II']['mismatch']} / {p['II']['patients']}"),
    }
    fu = _table(tables, "followup")
    if fu.empty or "grade" not in fu or "mismatch" not in fu:
        return [_row(c, pt, "", "not testable", "no patient with a follow-up in this build")
                for c, pt in claims.values()]
    fu = fu.assign(grade=fu["grade"].astype(str), rate=fu["mismatch"].astype(float))
    s = metrics.summarise(fu, ["grade"], ["rate"], config).set_index("grade")
    per_patient = fu.groupby(["grade", "subject"])["rate"].max()

    def est(g: str) -> _Estimate:
        return _Estimate(*s.loc[g, ["mean", "ci_low", "ci_high"]]) if g in s.index else _Estimate(*[math.nan] * 3)

    def count(g: str) -> str:
        if g not in s.index:
            return f"no WHO {g} patient"
        pp = per_patient.loc[g]
        return f"{int((pp > 0).sum())} / {len(pp)}"

    rows = []
    claim, paper_text = claims["most"]
    verdict, note = _above(est("IV"), 0.5, level) if "IV" in s.index else ("not testable", "no WHO IV patient")
    rows.append(_row(claim, paper_text, f"{count('IV')}; {est('IV')}", verdict,
                     "; ".join(n for n in (note, "'most': the rate's interval lies above 0.5") if n)))
    for key, (hi, lo) in (("IV>III", ("IV", "III")), ("III>II", ("III", "II"))):
        claim, paper_text = claims[key]
        missing = [g for g in (hi, lo) if g not in s.index]
        verdict, note = (("not testable", f"no WHO {' or '.join(missing)} patient") if missing
                         else _order(est(hi), est(lo), level))
        rows.append(_row(claim, paper_text, f"{est(hi)} vs {est(lo)}", verdict, note))
    claim, paper_text = claims["none"]
    if "II" not in s.index:
        rows.append(_row(claim, paper_text, count("II"), "not testable", "no WHO II patient with a follow-up"))
    else:
        rows.append(_row(claim, paper_text, count("II"),
                         "holds" if (per_patient.loc["II"] == 0).all() else "does not hold"))
    if "margin" in limits:
        rows = [_untestable(r, limits["margin"]) for r in rows]
    return rows


def findings_scorecard(tables: Mapping[str, pd.DataFrame], *, voxel_mm: float | None = None,
                       config: "EvalConfig | None" = None) -> pd.DataFrame:
    """Each qualitative claim of the paper as a test on this build's tables.

    Parameters
    ----------
    tables : mapping of str to DataFrame
        The build's tables (:func:`dmrilib.pipeline.load_tables`): ``table1``
        to ``table6``, ``dice_all`` and ``followup`` are read; a missing one
        makes its claims "not testable".
    voxel_mm : float, optional
        Voxel size of the network grid (the profile's ``cohort.voxel_size``).
        Claims that rest on the opening are "not testable" where it exceeds
        what the opening leaves of the simulated lesions (:func:`opening_limits`);
        None skips that check.
    config : EvalConfig, optional
        The profile's ``evaluate`` section: ``opening_size``, ``ci`` and the
        bootstrap settings of the intervals computed here (claims 5 and 6).

    Returns
    -------
    DataFrame
        Columns :data:`SCORECARD_COLUMNS`, one row per comparison:
        ``claim`` (numbered as below), ``paper`` (the paper's numbers, from
        :mod:`dmrilib.published`), ``this build`` (means with bootstrap
        intervals over patients), ``verdict`` (one of :data:`VERDICTS`) and
        ``note``. "A above B" *holds* when A's interval lies above B's, *does
        not hold* when it lies below, and is *inconclusive* when they overlap.

        1. DAE AUROC above RecDiscNet's, best configuration of each (the
           paper: RecDiscNet's AUC "is lower compared to top performing"
           DAE models).
        2. Sigmoid above linear DAE output, per latent size run with both.
        3. Half above full disturbance mean for RecDiscNet, per distribution
           and appearance run with both.
        4. RecDiscNet Dice above the DAE's under each rule of Tables 3-6,
           before and after the opening.
        5. The opening's Dice gain of the DAE above RecDiscNet's, per rule.
        6. Follow-up mismatches (best DAE) in most WHO IV patients, more
           frequent in IV than III and in III than II, none in II.
    """
    from dmrilib.metrics import EvalConfig

    config = config or EvalConfig()
    level = f"{config.ci:.0%}"
    checks = _opening_checks(voxel_mm, config.opening_size) if voxel_mm is not None else {}
    limits = {key: short for key, (short, _) in checks.items()}
    rows = [
        *_claim_auroc_order(tables, level),
        *_claim_pairs(tables, level, model=DAE),
        *_claim_pairs(tables, level, model=RECDISC),
        *_claim_dice_order(tables, level, limits),
        *_claim_opening(tables, level, limits, config),
        *_claim_followup(tables, level, limits, config),
    ]
    return pd.DataFrame(rows, columns=list(SCORECARD_COLUMNS))


# --------------------------------------------------------------------------- paper vs authors' code


def _fmt_setting(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt_setting(v) for v in value) + "]"
    return str(value)


def differences_table(profile: Profile) -> pd.DataFrame:
    """Every paper-vs-code difference (:data:`dmrilib.fidelity.DIFFERENCES`) and this build's value.

    Columns: row number, item, what the paper says, what the authors' code
    does, the value this profile uses (marked "(profile)" where the profile
    sets it itself, one of its reductions, or "(code)"/"(paper)" where it
    follows a side), and the profile key that switches it.
    """
    from dmrilib.fidelity import DIFFERENCES

    rows = []
    for d in DIFFERENCES:
        section = profile.section(d.section)
        value = getattr(section, d.key)
        if d.key in (profile.sections.get(d.section) or {}):
            source = "profile"
        else:
            source = next((side for side in ("code", "paper") if d.value(side) == value), "profile")
        rows.append({"#": d.number, "item": d.item, "paper": d.paper_says, "authors' code": d.code_says,
                     "this build": f"{_fmt_setting(value)}\u00a0({source})", "profile key": d.setting})
    return pd.DataFrame(rows)


def style_differences(table: pd.DataFrame) -> "Styler":
    """:func:`differences_table` as the book shows it, fitting a page at ~1400 px.

    The profile key goes under the item (in code type) instead of in a
    column of its own; prose columns wrap, values do not.
    """
    shown = table.drop(columns=["profile key"]).copy()
    shown["item"] = [f"{html.escape(item)}<br><code>{html.escape(key)}</code>"
                     for item, key in zip(table["item"], table["profile key"])]
    return (style_table(shown, wrap=["item", "paper", "authors' code"])
            .format(lambda v: v, subset=["item"], escape=None)
            .set_table_styles([{"selector": "", "props": "font-size: 0.85em;"}], overwrite=False))


def style_compact(table: pd.DataFrame, *, columns: list[str], stacked: Mapping[str, str] | None = None,
                  joined: Mapping[str, str] | None = None, wrap: list[str] | None = None) -> "Styler":
    """A wide table made to fit the book's text column at ~1400 px.

    Parameters
    ----------
    table : pandas.DataFrame
    columns : list of str
        The columns shown, in order (after stacking and joining).
    stacked : mapping, optional
        ``{shown: under}``: column ``under`` goes under ``shown`` in the same
        cell, in code type (an identifier under its description).
    joined : mapping, optional
        ``{value: unit}``: ``unit`` is appended to ``value``.
    wrap : list of str, optional
        Prose columns that wrap.
    """
    shown = table.copy()
    for column, under in (stacked or {}).items():
        shown[column] = [f"{html.escape(str(a))}<br><code>{html.escape(str(b))}</code>"
                         for a, b in zip(table[column], table[under])]
    for column, unit in (joined or {}).items():
        shown[column] = [f"{v} {u}".strip() for v, u in zip(table[column].astype(str), table[unit].fillna(""))]
    stacked_cols = [c for c in (stacked or {}) if c in columns]
    return (style_table(shown[columns], wrap=wrap or [])
            .format(lambda v: v, subset=stacked_cols, escape=None)
            .set_table_styles([{"selector": "", "props": "font-size: 0.8em;"}], overwrite=False))


#: Column names of :func:`ablation_summary` per metric of ``ablation.csv``.
_ABLATION_METRICS = {"auroc": "Δ AUROC", "dice_fixed": "Δ Dice fixed", "dice_otsu": "Δ Dice Otsu",
                     "dice_pool_max": "Δ Dice pooled max", "dice_dice_optimal": "Δ Dice optimal"}


def ablation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """``ablation.csv`` (:func:`dmrilib.ablation.run_ablation`) as one row per (difference, configuration).

    Each metric cell is the mean paired change (flipped − this build) with
    its bootstrap interval over patients, ``"+0.012 [-0.004, 0.027]"``.
    """
    rows = []
    for (row, model, _), group in table.groupby(["row", "model", "variant"], sort=False):
        first = group.iloc[0]
        out = {"#": int(row), "item": first["item"], "network": MODEL_NAMES.get(model, model),
               "configuration": first["variant"], "flipped": first["settings"], "change": first["change"]}
        if isinstance(first.get("kept"), str) and first["kept"]:
            out["change"] += f" (kept by the profile: {first['kept']})"
        for metric, label in _ABLATION_METRICS.items():
            m = group[group["metric"] == metric]
            out[label] = "" if m.empty else _signed(m.iloc[0])
        rows.append(out)
    return pd.DataFrame(rows)


def _signed(rec: Mapping) -> str:
    if pd.isna(rec["delta"]):
        return ""
    delta, low, high = (f"{v:+.3f}".replace("-0.000", "+0.000") for v in (rec["delta"], rec["low"], rec["high"]))
    return f"{delta}\u00a0[{low},\u00a0{high}]"


def _secondary(text: str) -> str:
    """HTML of a cell's second line (a detail under its value): smaller and lighter."""
    return f'<span style="font-size: 0.85em; opacity: 0.75;">{html.escape(text)}</span>'


def style_ablation(summary: pd.DataFrame, metrics: Iterable[str] | None = None) -> "Styler":
    """:func:`ablation_summary` as the book shows it, fitting a page at ~1400 px.

    The change goes under the item, the configuration under the network,
    and each interval under its mean change; cells whose interval excludes 0
    are in bold. ``metrics``: the column labels to show (default all five;
    three fit a page).
    """
    shown = pd.DataFrame({
        "#": summary["#"],
        "difference": [f"{html.escape(i)}<br>{_secondary(c.replace(' -> ', ' → '))}"
                       for i, c in zip(summary["item"], summary["change"])],
        "network": [f"{html.escape(n)}<br>{_secondary(v)}"
                    for n, v in zip(summary["network"], summary["configuration"])],
    })
    metrics = list(_ABLATION_METRICS.values()) if metrics is None else list(metrics)
    for label in metrics:
        shown[label] = summary[label]

    def cell(value: str) -> str:
        if not value:
            return ""
        mean, interval = value.split("\u00a0", 1)
        low, high = (float(v) for v in interval.strip("[]").split(",\u00a0"))
        text = f"{mean}<br>{_secondary(interval)}"
        return f"<b>{text}</b>" if low > 0 or high < 0 else text

    return (style_table(shown, wrap=["difference"])
            .format(lambda v: v, subset=["difference", "network"], escape=None)
            .format(cell, subset=metrics, escape=None)
            .set_table_styles([{"selector": "", "props": "font-size: 0.8em;"}], overwrite=False))


def study_subjects(ctx: BookContext, *, files: bool = False) -> pd.DataFrame:
    """One row per subject of a BIDS build: what the run used (``cohort/study.json``).

    ``files=True`` gives the files instead: the DWI series, the lesion mask
    and the brain mask of each subject, relative to the dataset root.
    """
    study = ctx.study
    if study is None:
        raise ValueError(f"{ctx.layout.cohort}: not a BIDS build (no {ctx.layout.study_file.name}).")
    rows = []
    for s in study["subjects"]:
        if files:
            rows.append({"subject": s["subject"], "DWI series": Path(s["dwi"]).name,
                         "lesion mask file": Path(s["lesion_file"]).name if s.get("lesion_file") else "",
                         "brain mask": s.get("brain_source", "")})
            continue
        group = s["group"] + ("" if s["group_source"].lower() == s["group"] else f" ({s['group_source']})")
        rows.append({
            "subject": s["subject"], "group": group, "session": s["session"] or "",
            "shells (b x volumes)": ", ".join(f"{b}x{n}" for b, n in s["shells"].items()),
            "directions used": s["n_directions"],
            "grid": "x".join(map(str, s["shape"])) + " @ " + "x".join(f"{v:g}" for v in s["voxel_size"]) + " mm",
            "lesion mask": s.get("lesion_source") or "", "lesion voxels": s.get("lesion_voxels"),
        })
    return pd.DataFrame(rows)


def study_scores(ctx: BookContext) -> pd.DataFrame:
    """Per-patient AUROC of the best DAE, the best RecDiscNet and the baseline (mean over folds)."""
    det = ctx.table("auroc_all")
    if det.empty:
        return pd.DataFrame()
    best = {}
    for model, table in ((DAE, "table1"), (RECDISC, "table2")):
        t = ctx.table(table)
        if len(t):
            best[model] = t.sort_values("auroc_mean").iloc[-1]["variant"]
    keep = det[[(m == BASELINE) or (best.get(m) == v) for m, v in zip(det["model"], det["variant"])]]
    wide = keep.groupby(["subject", "model"])["auroc"].mean().unstack("model")
    wide = wide.rename(columns={m: f"{MODEL_NAMES[m]}" + (f" ({best[m]})" if m in best else "") for m in wide.columns})
    return wide.reset_index()
