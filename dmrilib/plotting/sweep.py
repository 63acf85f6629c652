"""Figures of the difficulty sweep (:mod:`dmrilib.sweep`): results against realism.

Both functions take the summaries of :mod:`dmrilib.sweep`
(:func:`~dmrilib.sweep.sweep_table`, :func:`~dmrilib.sweep.group_costs`),
return a :class:`matplotlib.figure.Figure` and write nothing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dmrilib.variants import BASELINE, DAE, RECDISC

__all__ = ["plot_sweep_levels", "plot_group_costs"]

_METRICS = (("auroc", "lesion AUROC"), ("dice", "Dice (threshold rule, after opening)"))
_COLOURS = {DAE: "tab:blue", RECDISC: "tab:orange", BASELINE: "tab:green", "md": "tab:grey"}


def _names() -> dict[str, str]:
    from dmrilib.sweep import METHOD_NAMES

    return METHOD_NAMES


def _methods(frame: pd.DataFrame) -> list[str]:
    from dmrilib.sweep import METHODS

    present = set(frame["method"])
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def _errors(frame: pd.DataFrame, metric: str, centre: str) -> list[list[float]]:
    """Asymmetric error bars (2 lists of n) from an interval around ``centre``; 0 where it is missing.

    Lists, not a (2, n) array: matplotlib (3.11) converts the first row of a
    (2, 1) array to a scalar, which numpy deprecates.
    """
    low = (frame[centre] - frame[f"{metric}_low"]).to_numpy(float)
    high = (frame[f"{metric}_high"] - frame[centre]).to_numpy(float)
    return np.nan_to_num(np.clip(np.vstack([low, high]), 0.0, None)).tolist()


def plot_sweep_levels(summary: pd.DataFrame, levels: Sequence[str] | None = None) -> Figure:
    """Mean AUROC and Dice of each method against the realism level, with bootstrap intervals.

    Parameters
    ----------
    summary : DataFrame
        :func:`dmrilib.sweep.sweep_table`.
    levels : sequence of str, optional
        Conditions on the x axis, in order (default
        :data:`dmrilib.sweep.LEVEL_CONDITIONS` that the summary holds).

    Returns
    -------
    Figure
        Two panels (AUROC, Dice); one line per method, offset slightly
        along x so that the intervals do not hide each other.
    """
    from dmrilib.sweep import LEVEL_CONDITIONS

    levels = [c for c in (LEVEL_CONDITIONS if levels is None else levels) if c in set(summary["condition"])]
    if not levels:
        raise ValueError("plot_sweep_levels: the summary holds none of the levels "
                         f"{list(LEVEL_CONDITIONS if levels is None else levels)}; run the sweep first.")
    frame = summary[summary["condition"].isin(levels)]
    methods = _methods(frame)
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    x = {c: i for i, c in enumerate(levels)}
    step = 0.08
    for ax, (metric, label) in zip(axes, _METRICS):
        for k, method in enumerate(methods):
            rows = frame[frame["method"] == method].set_index("condition").reindex(levels).dropna(subset=[metric])
            if rows.empty:
                continue
            xs = np.array([x[c] for c in rows.index]) + (k - (len(methods) - 1) / 2) * step
            ax.errorbar(xs, rows[metric], yerr=_errors(rows, metric, metric), marker="o", ms=4, capsize=3,
                        color=_COLOURS.get(method), label=_names().get(method, method))
        ax.set_xticks(range(len(levels)), levels)
        ax.set(xlabel="realism level (cumulative)", ylabel=label, ylim=(0.0, 1.02))
        if metric == "auroc":
            ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", loc="lower left")
    return fig


def plot_group_costs(costs: pd.DataFrame) -> Figure:
    """Change of each method's AUROC and Dice when one effect group alone is switched on (vs L0).

    Parameters
    ----------
    costs : DataFrame
        :func:`dmrilib.sweep.group_costs`.

    Returns
    -------
    Figure
        Two panels of horizontal bars, one group of bars per effect group,
        one bar per method, with the paired bootstrap interval; the costliest
        group of each method (largest AUROC drop) is hatched.
    """
    if costs.empty:
        raise ValueError("plot_group_costs: no group condition shares patients with L0; run the sweep first.")
    from dmrilib.sweep import GROUP_CONDITIONS

    groups = [g for g in GROUP_CONDITIONS if g in set(costs["group"])]
    methods = _methods(costs)
    fig = Figure(figsize=(9.0, 0.9 + 0.75 * len(groups)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    height = 0.8 / len(methods)
    for ax, (metric, label) in zip(axes, _METRICS):
        for k, method in enumerate(methods):
            rows = costs[costs["method"] == method].set_index("group").reindex(groups)
            ys = np.arange(len(groups)) - 0.4 + (k + 0.5) * height
            values = rows[f"{metric}_delta"].to_numpy(float)
            bars = ax.barh(ys, np.nan_to_num(values), height=height * 0.9, color=_COLOURS.get(method),
                           label=_names().get(method, method),
                           xerr=_errors(rows.assign(centre=values), metric, "centre"), capsize=2,
                           error_kw={"lw": 0.8})
            for bar, worst in zip(bars, rows["costliest"].fillna(False).astype(bool)):
                if worst:
                    bar.set_hatch("///")
                    bar.set_edgecolor("black")
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set(xlabel=f"change of {label} vs L0")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(groups)), [f"{g}\n({GROUP_CONDITIONS[g]})" for g in groups])
    axes[0].invert_yaxis()
    axes[1].legend(fontsize="small", loc="best")
    return fig
