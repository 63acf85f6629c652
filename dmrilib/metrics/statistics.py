"""Figures' data (score densities, follow-up co-localisation), bootstrap intervals and the
paper's tables (means and SDs per group, best variants, paired Wilcoxon tests)."""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import ndimage

from dmrilib.metrics.config import EvalConfig
from dmrilib.metrics.detection import _MapStats, opening
from dmrilib.variants import DAE, MODELS, RECDISC


# --------------------------------------------------------------------------- figures' data


def score_densities(score_maps: ArrayLike, truths: ArrayLike, masks: ArrayLike, *, bins: int = 100,
                    value_range: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Histogram densities of scores in healthy tissue vs lesion (paper Fig. 4).

    Parameters
    ----------
    score_maps, truths, masks : ndarray
        Same shapes, one map ``(X, Y, Z)`` or a stack ``(S, X, Y, Z)``; voxels
        inside the mask are split by ``truth``.
    bins : int
        Number of bins.
    value_range : (float, float), optional
        Histogram range (default: min and max inside the masks).

    Returns
    -------
    dict
        ``edges, centers, healthy, lesion`` (densities integrating to 1, or
        zeros for an empty class) and ``n_healthy, n_lesion``.
    """
    scores = np.asarray(score_maps)
    truths = np.asarray(truths).astype(bool, copy=False)
    masks = np.asarray(masks).astype(bool, copy=False)
    if not scores.shape == truths.shape == masks.shape:
        raise ValueError(
            f"score_maps {scores.shape}, truths {truths.shape} and masks {masks.shape} must have the same shape."
        )
    inside = scores[masks].astype(np.float64)
    if inside.size == 0:
        raise ValueError("masks hold no voxels: no densities to compute.")
    lab = truths[masks]
    if value_range is None:
        value_range = (float(inside.min()), float(inside.max()))
        if value_range[0] == value_range[1]:
            value_range = (value_range[0] - 0.5, value_range[1] + 0.5)
    edges = np.histogram_bin_edges(inside, bins=bins, range=value_range)
    out: dict[str, Any] = {"edges": edges, "centers": (edges[:-1] + edges[1:]) / 2}
    for name, sel in (("healthy", ~lab), ("lesion", lab)):
        if sel.any():
            out[name] = np.histogram(inside[sel], bins=edges, density=True)[0]
        else:
            out[name] = np.zeros(bins)
        out[f"n_{name}"] = int(sel.sum())
    return out


def followup_colocalisation(
    score_map: ArrayLike,
    threshold: float,
    lesion: ArrayLike,
    followup_lesion: ArrayLike,
    mask: ArrayLike,
    *,
    opening_size: int = 3,
    min_mismatch_size: int = 10,
) -> dict[str, Any]:
    """Flagged voxels outside the pre-operative lesion and their follow-up fate.

    The map is thresholded (``>= threshold``) inside ``mask``, opened, and the
    flagged voxels outside ``lesion`` are compared with the follow-up lesion
    (paper Fig. 9, made quantitative).

    Parameters
    ----------
    score_map : ndarray, shape (X, Y, Z)
        Anomaly map.
    threshold : float
        Threshold, e.g. from a rule of :func:`evaluate_map`.
    lesion, followup_lesion : ndarray of bool, shape (X, Y, Z)
        Pre-operative and follow-up lesion (all-False when no follow-up).
    mask : ndarray of bool, shape (X, Y, Z)
        Evaluation region.
    opening_size : int
        Opening element (paper: 3).
    min_mismatch_size : int
        A flagged component outside the lesion with at least this many voxels
        makes the patient a "mismatch".

    Returns
    -------
    dict
        ``flagged_outside`` (voxels), ``outside_in_followup`` (voxels of it that
        are lesion at follow-up), ``fraction_in_followup`` (NaN when nothing is
        flagged outside), ``n_mismatch_components``, ``largest_component``,
        ``mismatch`` (bool), ``mismatch_in_followup`` (a mismatch component
        touches the follow-up lesion).
    """
    st = _MapStats(score_map, lesion, mask)
    followup = np.asarray(followup_lesion).astype(bool, copy=False)
    if followup.shape != st.score_map.shape:
        raise ValueError(f"followup_lesion has shape {followup.shape} but score_map has {st.score_map.shape}.")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}.")
    binary = opening((st.score_map >= threshold) & st.mask, opening_size)
    outside = binary & ~st.truth
    labels, n = ndimage.label(outside, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    big = np.flatnonzero(sizes >= min_mismatch_size) + 1
    touches = np.unique(labels[outside & followup])
    n_out = int(outside.sum())
    n_fu = int((outside & followup).sum())
    return {
        "flagged_outside": n_out,
        "outside_in_followup": n_fu,
        "fraction_in_followup": n_fu / n_out if n_out else math.nan,
        "n_mismatch_components": int(big.size),
        "largest_component": int(sizes.max()) if n else 0,
        "mismatch": bool(big.size),
        "mismatch_in_followup": bool(np.isin(big, touches).any()),
    }


# --------------------------------------------------------------------------- statistics


def bootstrap_ci(values: ArrayLike, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Parameters
    ----------
    values : array-like of float
        One value per resampling unit (patient); NaNs are dropped.
    n_boot : int
        Number of resamples.
    ci : float
        Confidence level.
    seed : int
        Seed of a fresh ``numpy.random.Generator``: the same values and seed
        always give the same interval.

    Returns
    -------
    (low, high) : tuple of float
        NaN for no values; ``(v, v)`` for a single value.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarise(df: pd.DataFrame, by: Sequence[str], value_cols: Sequence[str],
              config: EvalConfig | None = None) -> pd.DataFrame:
    """Mean, sd, bootstrap CI and count of value columns per group.

    Mean and sd follow ``config.aggregate``: ``per_fold`` (the authors' code)
    takes, within each fold, the mean and the population SD over the group's
    rows (patients) and averages both over folds; ``pooled`` takes the mean
    and the sample SD over all rows of the group (patients and folds). A table
    without a ``fold`` column is one fold. The confidence interval resamples
    *patients*: when the table has a ``subject`` column, values are first
    averaged per subject over folds, so that folds of one patient are not
    treated as independent.

    Parameters
    ----------
    df : DataFrame
        Tidy table.
    by : sequence of str
        Grouping columns.
    value_cols : sequence of str
        Columns to summarise.
    config : EvalConfig, optional
        ``aggregate``, ``n_bootstrap``, ``ci`` and ``seed``.

    Returns
    -------
    DataFrame
        Columns ``*by, metric, mean, sd, ci_low, ci_high, n`` (``n`` counts
        non-NaN rows).
    """
    config = config or EvalConfig()
    by = list(by)
    missing = [c for c in [*by, *value_cols] if c not in df.columns]
    if missing:
        raise ValueError(f"summarise: column(s) {missing} not in the table (columns: {list(df.columns)}).")
    records = []
    groups = df.groupby(by, sort=True, dropna=False) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for col in value_cols:
            vals = g[col].astype(float)
            units = vals.groupby(g["subject"]).mean() if "subject" in g.columns else vals
            low, high = bootstrap_ci(units.to_numpy(), n_boot=config.n_bootstrap, ci=config.ci, seed=config.seed)
            mean, sd = _mean_sd(vals, g["fold"] if "fold" in g.columns else None, config.aggregate)
            records.append({**dict(zip(by, key)), "metric": col, "mean": mean, "sd": sd,
                            "ci_low": low, "ci_high": high, "n": int(vals.notna().sum())})
    return pd.DataFrame.from_records(records, columns=[*by, "metric", "mean", "sd", "ci_low", "ci_high", "n"])


def _mean_sd(values: pd.Series, folds: pd.Series | None, aggregate: str) -> tuple[float, float]:
    """Mean and SD of one group's values (NaNs skipped) under ``EvalConfig.aggregate``."""
    if aggregate == "pooled":
        return float(values.mean()), float(values.std(ddof=1))
    if folds is None:
        return float(values.mean()), float(values.std(ddof=0))
    per_fold = values.groupby(folds, dropna=False)
    # statistics.pstdev per fold in the authors' code; pandas skips NaNs (a
    # fold of NaNs only, e.g. a supervised rule without lesion, drops out)
    return float(per_fold.mean().mean()), float(per_fold.std(ddof=0).mean())


def _group_means(frame: pd.DataFrame, by: list[str], column: str, aggregate: str) -> pd.Series:
    """Mean of ``column`` per ``by`` group, fold means averaged for ``per_fold``."""
    if aggregate == "per_fold" and "fold" in frame.columns:
        return frame.groupby([*by, "fold"], dropna=False)[column].mean().groupby(level=list(range(len(by)))).mean()
    return frame.groupby(by)[column].mean()


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.2f}"


_DAE_RE = re.compile(r"^lsd(?P<lsd>\d+)-(?P<activation>linear|sigmoid)$")
_REC_RE = re.compile(r"^(?P<distribution>[a-z]+)-(?P<appearance>[a-z]+)-(?P<mean>full|half)$")


def table_auroc(auroc_df: pd.DataFrame, model: str, config: EvalConfig | None = None) -> pd.DataFrame:
    """The paper's Tables 1 (DAE) and 2 (RecDiscNet): AUROC per variant.

    Parameters
    ----------
    auroc_df : DataFrame
        Columns ``model, variant, fold, subject, auroc`` (tidy).
    model : str
        ``"dae"`` or ``"recdisc"``.

    Returns
    -------
    DataFrame
        One row per variant sorted by ascending mean AUROC, index ``1..N``
        (the paper's m/d), with the parsed variant parts, ``auroc_mean,
        auroc_sd, ci_low, ci_high, n`` and ``AUC`` ("mean ± sd").
    """
    sub = auroc_df[auroc_df["model"] == model]
    if sub.empty:
        present = sorted(auroc_df["model"].unique())
        raise ValueError(f"table_auroc: no rows for model {model!r}; models present: {present}.")
    s = summarise(sub, ["variant"], ["auroc"], config).sort_values("mean", kind="stable").reset_index(drop=True)
    pattern = {DAE: _DAE_RE, RECDISC: _REC_RE}.get(model)
    parts = pd.DataFrame([(m.groupdict() if pattern and (m := pattern.match(v)) else {}) for v in s["variant"]],
                         index=s.index)
    out = pd.concat([s[["variant"]], parts], axis=1)
    out["auroc_mean"], out["auroc_sd"] = s["mean"], s["sd"]
    out["ci_low"], out["ci_high"], out["n"] = s["ci_low"], s["ci_high"], s["n"]
    out["AUC"] = [_pm(m, d) for m, d in zip(s["mean"], s["sd"])]
    out.index = pd.RangeIndex(1, len(out) + 1, name="index")
    return out


def best_variants(dice_df: pd.DataFrame, rule: str, config: EvalConfig | None = None) -> dict[str, str]:
    """Best variant of each model under a threshold rule.

    The best variant has the highest mean of ``config.best_by`` (``dice_post``
    by default, or ``dice``) over its patients and folds, the mean taken as
    :func:`summarise` takes it (``config.aggregate``); ties go to the variant
    whose name sorts first.
    """
    config = config or EvalConfig()
    sub = dice_df[dice_df["rule"] == rule]
    if sub.empty:
        raise ValueError(f"no rows for rule {rule!r}; rules present: {sorted(dice_df['rule'].unique())}.")
    means = _group_means(sub, ["model", "variant"], config.best_by, config.aggregate).reset_index()
    means = means.sort_values(["model", config.best_by, "variant"], ascending=[True, False, True])
    return dict(means.groupby("model", sort=True)["variant"].first())


def best_auroc_variant(det_df: pd.DataFrame, model: str) -> str:
    """The variant of ``model`` with the highest mean AUROC over its rows (the paper's choice for follow-up).

    Parameters
    ----------
    det_df : DataFrame
        Columns ``model, variant, auroc`` (e.g. ``tables/auroc_all.csv``).
    model : str

    Raises
    ------
    ValueError
        If ``det_df`` has no row of ``model``.
    """
    det = det_df[det_df["model"] == model]
    return str(det.groupby("variant")["auroc"].mean().idxmax())


def table_dice(dice_df: pd.DataFrame, rule: str, config: EvalConfig | None = None) -> pd.DataFrame:
    """The paper's Tables 3-6: best variant of each model under one threshold rule.

    Parameters
    ----------
    dice_df : DataFrame
        Columns ``model, variant, fold, subject, rule, threshold, dice, dice_post``.
    rule : str
        Threshold rule, e.g. ``"fixed"``, ``"otsu"``, ``"pool_max"``, ``"dice_optimal"``.
    config : EvalConfig, optional
        ``best_by`` selects the variant (see :func:`best_variants`); bootstrap settings.

    Returns
    -------
    DataFrame
        One row per model: ``model, variant, threshold`` (mean), and for
        ``dice`` and ``dice_post``: ``_mean, _sd, _ci_low, _ci_high`` plus the
        formatted "mean ± sd" columns ``Dice`` and ``Dice postprocessed``; ``n``.
    """
    config = config or EvalConfig()
    best = best_variants(dice_df, rule, config)
    rows = []
    for model, variant in best.items():
        g = dice_df[(dice_df["rule"] == rule) & (dice_df["model"] == model) & (dice_df["variant"] == variant)]
        s = summarise(g, [], ["threshold", "dice", "dice_post"], config).set_index("metric")
        row: dict[str, Any] = {"model": model, "variant": variant, "threshold": s.loc["threshold", "mean"]}
        for col in ("dice", "dice_post"):
            for stat in ("mean", "sd", "ci_low", "ci_high"):
                row[f"{col}_{stat}"] = s.loc[col, stat]
        row["Dice"] = _pm(row["dice_mean"], row["dice_sd"])
        row["Dice postprocessed"] = _pm(row["dice_post_mean"], row["dice_post_sd"])
        row["n"] = int(s.loc["dice", "n"])
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_by_group(dice_df: pd.DataFrame, participants: pd.DataFrame, rule: str, *,
                       group: str = "size_class", config: EvalConfig | None = None) -> pd.DataFrame:
    """Dice of each model's best variant per patient group (size class or grade).

    Parameters
    ----------
    dice_df : DataFrame
        Tidy Dice table.
    participants : DataFrame
        ``participants.tsv`` contents: ``participant_id`` (with or without the
        ``sub-`` prefix, or as the index) and the ``group`` column.
    rule : str
        Threshold rule.
    group : str
        ``"size_class"`` or ``"grade"`` (any participants column).

    Returns
    -------
    DataFrame
        :func:`summarise` output grouped by ``model, variant, <group>``.
    """
    config = config or EvalConfig()
    p = participants.reset_index() if "participant_id" not in participants.columns else participants
    if "participant_id" not in p.columns:
        p = p.rename(columns={p.columns[0]: "participant_id"})
    if group not in p.columns:
        raise ValueError(f"participants have no column {group!r}; columns: {list(p.columns)}.")
    key = p["participant_id"].astype(str).map(lambda s: s if s.startswith("sub-") else f"sub-{s}")
    lookup = dict(zip(key, p[group]))
    best = best_variants(dice_df, rule, config)
    sub = dice_df[(dice_df["rule"] == rule) & (dice_df["variant"] == dice_df["model"].map(best))].copy()
    subj = sub["subject"].astype(str).map(lambda s: s if s.startswith("sub-") else f"sub-{s}")
    sub[group] = subj.map(lookup)
    return summarise(sub, ["model", "variant", group], ["dice", "dice_post"], config)


def paired_wilcoxon(dice_df: pd.DataFrame, rule: str, *, value: str = "dice_post",
                    models: tuple[str, str] = MODELS,
                    config: EvalConfig | None = None) -> dict[str, Any]:
    """Paired Wilcoxon signed-rank test between the best variants of two models.

    Each model's best variant under ``rule`` (:func:`best_variants`) gives one
    value per patient (mean over folds); patients present for both are paired.

    Returns
    -------
    dict
        ``a, b`` ("model/variant"), ``n`` pairs, ``median_difference`` (a - b),
        ``statistic``, ``pvalue`` (NaN when fewer than 2 non-zero differences).
    """
    best = best_variants(dice_df, rule, config)
    missing = [m for m in models if m not in best]
    if missing:
        raise ValueError(f"paired_wilcoxon: no rows for model(s) {missing} under rule {rule!r}.")
    per = []
    for m in models:
        g = dice_df[(dice_df["rule"] == rule) & (dice_df["model"] == m) & (dice_df["variant"] == best[m])]
        per.append(g.groupby("subject")[value].mean())
    a, b = per[0].align(per[1], join="inner")
    ok = a.notna() & b.notna()
    a, b = a[ok], b[ok]
    diff = (a - b).to_numpy()
    out: dict[str, Any] = {"a": f"{models[0]}/{best[models[0]]}", "b": f"{models[1]}/{best[models[1]]}",
                           "n": int(diff.size), "median_difference": float(np.median(diff)) if diff.size else math.nan,
                           "statistic": math.nan, "pvalue": math.nan}
    if np.count_nonzero(diff) >= 2:
        from scipy import stats  # imported here: scipy.stats costs ~1 s per job start

        res = stats.wilcoxon(a.to_numpy(), b.to_numpy())
        out["statistic"], out["pvalue"] = float(res.statistic), float(res.pvalue)
    return out
