"""Result figures: ROC curves, score densities, qualitative panels, follow-up, Dice per rule.

Every function takes arrays or DataFrames, returns a
:class:`matplotlib.figure.Figure` and writes nothing; saving is the caller's
job. Slices are axial (last array axis), rotated by 90 degrees so that the
first voxel axis runs left-right and the second bottom-up.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from matplotlib.figure import Figure

from dmrilib.metrics import opening

__all__ = [
    "plot_roc_curves",
    "plot_score_densities",
    "plot_qualitative",
    "plot_followup",
    "plot_dice_by_rule",
    "plot_groundtruth",
    "mean_roc",
    "lesion_slice",
]


def mean_roc(curves: Sequence[tuple[np.ndarray, np.ndarray]], n_points: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """Vertical average of per-patient ROC curves on a common FPR grid.

    Parameters
    ----------
    curves : sequence of (fpr, tpr)
        One ROC curve per patient (as from :func:`dmrilib.metrics.roc_curve`);
        curves with NaN rates are skipped.
    n_points : int
        Points of the common FPR grid in [0, 1].

    Returns
    -------
    fpr, mean_tpr : ndarray
    """
    grid = np.linspace(0.0, 1.0, n_points)
    tprs = [np.interp(grid, f, t) for f, t in curves if np.isfinite(f).all() and np.isfinite(t).all()]
    if not tprs:
        raise ValueError("no ROC curve with both classes present: nothing to average.")
    mean = np.mean(tprs, axis=0)
    mean[0] = 0.0
    return grid, mean


def lesion_slice(volume_mask: ArrayLike) -> int:
    """Index of the axial slice (last axis) holding the most voxels of a mask."""
    counts = np.asarray(volume_mask, bool).reshape(-1, np.shape(volume_mask)[-1]).sum(axis=0)
    return int(np.argmax(counts))


def _show(ax: Any, img: np.ndarray, **kw: Any) -> None:
    ax.imshow(np.rot90(img), **kw)
    ax.set_xticks([])
    ax.set_yticks([])


def _contour(ax: Any, mask2d: np.ndarray, color: str) -> None:
    m = np.rot90(np.asarray(mask2d, float))
    if m.any() and (m == 0).any():
        ax.contour(m, levels=[0.5], colors=color, linewidths=1.0)


def plot_roc_curves(curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], *,
                    aurocs: Mapping[str, float] | None = None, title: str = "") -> Figure:
    """Mean ROC curve over patients for each variant.

    Parameters
    ----------
    curves : mapping of str to sequence of (fpr, tpr)
        Variant label -> per-patient ROC curves.
    aurocs : mapping of str to float, optional
        Mean AUROC per label, shown in the legend.
    title : str
        Axes title.

    Returns
    -------
    Figure
        One axes.
    """
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for label, per_patient in curves.items():
        fpr, tpr = mean_roc(per_patient)
        text = label if aurocs is None or label not in aurocs else f"{label} (AUC {aurocs[label]:.3f})"
        ax.plot(fpr, tpr, label=text, lw=1.5)
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_score_densities(densities: Mapping[str, Mapping[str, Any]], *, ncols: int = 2,
                         log_density: bool = False) -> Figure:
    """Anomaly-score densities in healthy WM/GM vs tumour (paper Fig. 4).

    Parameters
    ----------
    densities : mapping of str to dict
        Panel title (e.g. "best μHalf: mix-mix-half") -> output of
        :func:`dmrilib.metrics.score_densities`. Four panels give the paper's
        2x2 layout (best/worst x μHalf/μFull).
    ncols : int
        Panels per row.
    log_density : bool
        Log-scale the density axis (healthy tissue peaks strongly near 0).

    Returns
    -------
    Figure
        One axes per panel.
    """
    if not densities:
        raise ValueError("densities is empty: pass at least one panel.")
    n = len(densities)
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(4.2 * min(n, ncols), 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, min(n, ncols), squeeze=False).ravel()
    for ax, (title, d) in zip(axes, densities.items()):
        ax.fill_between(d["centers"], d["healthy"], step="mid", alpha=0.5, color="tab:blue",
                        label=f"healthy WM/GM (n={d['n_healthy']})")
        ax.fill_between(d["centers"], d["lesion"], step="mid", alpha=0.5, color="tab:red",
                        label=f"tumour (n={d['n_lesion']})")
        ax.set(title=title, xlabel="anomaly score", ylabel="density")
        if log_density:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig


def plot_qualitative(cases: Sequence[Mapping[str, Any]], threshold: float | Sequence[float], *,
                     opening_size: int = 3, title: str = "") -> Figure:
    """Qualitative panel of the paper's Figs. 5-8.

    Rows are patients (e.g. large / medium / small tumour); columns: MD slice
    with the ground-truth contour, anomaly map with colourbar, binary map
    (``score >= threshold`` inside the mask), post-processed binary map. The
    axial slice with the most lesion voxels is shown.

    Parameters
    ----------
    cases : sequence of dict
        Keys ``md``, ``score_map``, ``truth``, ``mask`` (arrays (X, Y, Z)) and
        optional ``label`` (row title, e.g. "large").
    threshold : float or sequence of float
        One threshold for all rows or one per row.
    opening_size : int
        Opening element of the post-processed column.
    title : str
        Figure title.

    Returns
    -------
    Figure
        ``4 * len(cases)`` image axes plus one colourbar axes per row.
    """
    if not cases:
        raise ValueError("cases is empty: pass at least one patient.")
    thresholds = np.broadcast_to(np.asarray(threshold, float), (len(cases),))
    fig = Figure(figsize=(10, 2.6 * len(cases)), layout="constrained")
    axes = fig.subplots(len(cases), 4, squeeze=False)
    for row, (case, thr) in enumerate(zip(cases, thresholds)):
        score, truth, mask = (np.asarray(case[k]) for k in ("score_map", "truth", "mask"))
        md = np.asarray(case["md"])
        truth, mask = truth.astype(bool), mask.astype(bool)
        z = lesion_slice(truth) if truth.any() else truth.shape[-1] // 2
        binary = (score >= thr) & mask
        post = opening(binary, opening_size)
        a = axes[row]
        _show(a[0], md[..., z], cmap="gray")
        _contour(a[0], truth[..., z], "tab:red")
        im = a[1].imshow(np.rot90(np.where(mask[..., z], score[..., z], np.nan)), cmap="inferno")
        a[1].set_xticks([])
        a[1].set_yticks([])
        fig.colorbar(im, ax=a[1], shrink=0.8)
        for ax, b in ((a[2], binary), (a[3], post)):
            _show(ax, md[..., z], cmap="gray")
            _show(ax, np.ma.masked_where(~b[..., z], b[..., z]), cmap="autumn", alpha=0.8, vmin=0, vmax=1)
            _contour(ax, truth[..., z], "tab:cyan")
        a[0].set_ylabel(str(case.get("label", f"patient {row + 1}")))
        if row == 0:
            for ax, name in zip(a, ("Data (MD)", "Map", f"Binary (T={thr:.3g})", "Postprocessed")):
                ax.set_title(name)
    if title:
        fig.suptitle(title)
    return fig


def plot_followup(md: ArrayLike, score_map: ArrayLike, lesion: ArrayLike, followup_lesion: ArrayLike,
                  mask: ArrayLike, *, threshold: float,
                  opening_size: int = 3, title: str = "") -> Figure:
    """Follow-up colocalisation of one patient (paper Fig. 9 analogue).

    Panels: MD with the pre-operative lesion contour; anomaly map; MD with the
    follow-up lesion contour; flagged voxels outside the pre-operative lesion
    (after opening) over MD, with both contours. The axial slice with the most
    flagged-outside voxels is shown (the most lesion if none).

    Returns
    -------
    Figure
        Four image axes plus one colourbar axes.
    """
    md, score = np.asarray(md), np.asarray(score_map)
    lesion, follow, mask = (np.asarray(a).astype(bool) for a in (lesion, followup_lesion, mask))
    flagged = opening((score >= threshold) & mask, opening_size)
    outside = flagged & ~lesion
    z = lesion_slice(outside) if outside.any() else lesion_slice(lesion | follow)
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    a = fig.subplots(1, 4)
    _show(a[0], md[..., z], cmap="gray")
    _contour(a[0], lesion[..., z], "tab:red")
    a[0].set_title("pre-op lesion")
    im = a[1].imshow(np.rot90(np.where(mask[..., z], score[..., z], np.nan)), cmap="inferno")
    a[1].set_xticks([])
    a[1].set_yticks([])
    fig.colorbar(im, ax=a[1], shrink=0.8)
    a[1].set_title("anomaly map")
    _show(a[2], md[..., z], cmap="gray")
    _contour(a[2], follow[..., z], "tab:green")
    a[2].set_title("follow-up lesion")
    _show(a[3], md[..., z], cmap="gray")
    _show(a[3], np.ma.masked_where(~outside[..., z], outside[..., z]), cmap="autumn", alpha=0.9, vmin=0, vmax=1)
    _contour(a[3], lesion[..., z], "tab:red")
    _contour(a[3], follow[..., z], "tab:green")
    a[3].set_title("flagged outside pre-op lesion")
    if title:
        fig.suptitle(title)
    return fig


def plot_groundtruth(cases: Sequence[Mapping[str, Any]], table: pd.DataFrame) -> Figure:
    """The ground-truth pipeline against the truth: example masks and per-patient errors.

    Parameters
    ----------
    cases : sequence of mapping
        Each with ``label``, ``md`` (background), ``exact`` (the simulator's
        lesion) and ``pipeline`` (the carried-over segmentation), all on one grid.
    table : DataFrame
        One row per patient with ``dice_segmentation``, ``dice_true_transform``,
        ``dice_pipeline`` and ``reg_error_p95_mm`` (from
        :func:`dmrilib.groundtruth.run_groundtruth_cohort`).

    Returns
    -------
    Figure
        One image axes per case, then a Dice strip plot and a registration-error strip plot.
    """
    n = len(cases)
    fig = Figure(figsize=(3.0 * n + 6.5, 3.2), layout="constrained")
    axes = fig.subplots(1, n + 2, width_ratios=[1.0] * n + [1.3, 0.8])
    for ax, case in zip(axes[:n], cases):
        exact, piped = np.asarray(case["exact"], bool), np.asarray(case["pipeline"], bool)
        z = lesion_slice(exact | piped)
        _show(ax, np.asarray(case["md"])[..., z], cmap="gray")
        _contour(ax, exact[..., z], "tab:green")
        _contour(ax, piped[..., z], "tab:orange")
        ax.set_title(str(case["label"]), fontsize=9)
    rng = np.random.default_rng(0)  # jitter only
    columns = [("dice_segmentation", "segmentation\n(T1w grid)"), ("dice_true_transform", "true\ntransform"),
               ("dice_pipeline", "pipeline\n(DWI grid)")]
    ax = axes[n]
    for k, (col, _) in enumerate(columns):
        values = pd.to_numeric(table[col], errors="coerce").dropna().to_numpy()
        ax.scatter(k + rng.uniform(-0.15, 0.15, len(values)), values, s=12, alpha=0.7)
        if len(values):
            ax.hlines(np.median(values), k - 0.3, k + 0.3, color="black")
    ax.set_xticks(range(len(columns)), [label for _, label in columns], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice vs the simulated lesion")
    ax = axes[n + 1]
    err = pd.to_numeric(table["reg_error_p95_mm"], errors="coerce").dropna().to_numpy()
    ax.scatter(rng.uniform(-0.15, 0.15, len(err)), err, s=12, alpha=0.7, color="tab:purple")
    if len(err):
        ax.hlines(np.median(err), -0.3, 0.3, color="black")
    ax.set_xticks([0], ["95th pct."], fontsize=8)
    ax.set_xlim(-0.6, 0.6)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("registration error (mm)")
    fig.suptitle("green: simulated lesion, orange: ground-truth pipeline (U-Net + ANTs)", fontsize=9)
    return fig


def plot_dice_by_rule(summary: pd.DataFrame, *, metric: str | Sequence[str] = ("dice", "dice_post"),
                      title: str = "") -> Figure:
    """Mean Dice with confidence intervals per threshold rule and model.

    Parameters
    ----------
    summary : DataFrame
        Output of :func:`dmrilib.metrics.summarise` grouped by at least
        ``model`` and ``rule`` (columns ``model, rule, metric, mean, ci_low,
        ci_high``), e.g. of each model's best variant per rule.
    metric : str or sequence of str
        Metric(s) to show, one axes each.
    title : str
        Figure title.

    Returns
    -------
    Figure
        One axes per metric.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    need = {"model", "rule", "metric", "mean", "ci_low", "ci_high"}
    if not need <= set(summary.columns):
        raise ValueError(f"summary needs columns {sorted(need)}; got {list(summary.columns)} (use metrics.summarise).")
    rules = list(dict.fromkeys(summary["rule"]))
    models = list(dict.fromkeys(summary["model"]))
    fig = Figure(figsize=(max(5, 1.0 * len(rules)) * len(metrics) * 0.9, 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    offsets = np.linspace(-0.2, 0.2, len(models)) if len(models) > 1 else np.zeros(1)
    for ax, m in zip(axes, metrics):
        sub = summary[summary["metric"] == m]
        for off, model in zip(offsets, models):
            g = sub[sub["model"] == model].set_index("rule").reindex(rules)
            x = np.arange(len(rules)) + off
            err = np.vstack([g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]])
            ax.errorbar(x, g["mean"], yerr=np.clip(err, 0, None), fmt="o", capsize=3, label=model)
        ax.set_xticks(np.arange(len(rules)), rules, rotation=45, ha="right")
        ax.set(ylabel=m.replace("_", " "), ylim=(0, 1), title=m.replace("_", " "))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
