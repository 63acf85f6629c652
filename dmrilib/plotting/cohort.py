"""Figures of the simulated cohort: DTI slices with ground truth, tissue histograms."""
from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["LITERATURE_RANGES", "subject_dti", "plot_cohort_slices", "plot_tissue_histograms"]

#: Healthy adult DTI ranges at b=1000 the simulation aims for (FA unitless, MD in 1e-3 mm^2/s).
LITERATURE_RANGES = {
    ("wm", "fa"): (0.35, 0.8),
    ("gm", "fa"): (0.0, 0.25),
    ("wm", "md"): (0.6, 0.9),
    ("gm", "md"): (0.7, 1.1),
    ("csf", "md"): (2.5, 3.2),
}


def subject_dti(subject) -> dict[str, np.ndarray]:
    """FA, MD (1e-3 mm^2/s) and principal eigenvector of a simulated subject (dipy OLS fit)."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    gtab = gradient_table(subject.bvals, bvecs=subject.bvecs)
    fit = TensorModel(gtab, fit_method="OLS").fit(subject.dwi, mask=subject.brain_mask)
    fa = np.nan_to_num(fit.fa).astype(np.float32)
    md = (np.nan_to_num(fit.md) * 1e3).astype(np.float32)
    return {"fa": fa, "md": md, "evec": np.nan_to_num(fit.evecs[..., 0]).astype(np.float32)}


def _slice_index(subject) -> int:
    if subject.lesion.any():
        return int(np.argmax(subject.lesion.sum(axis=(0, 1))))
    return int(subject.brain_mask.shape[2] * 0.55)


def plot_cohort_slices(subjects: Mapping[str, object], *, dti: Mapping[str, dict] | None = None):
    """Colour-FA and MD axial slices with ground-truth contours, one row per subject.

    Parameters
    ----------
    subjects : mapping of str to SimulatedSubject
        Row title -> subject, e.g. ``{"healthy": h, "large": p1, "medium": p2, "small": p3}``.
    dti : mapping, optional
        Precomputed :func:`subject_dti` results under the same keys.

    Returns
    -------
    matplotlib.figure.Figure
        Patients' slices pass through the largest lesion cross-section; the
        visible tumour is outlined in red, the infiltration zone in yellow
        and the follow-up tumour (if any) dashed in cyan.
    """
    import matplotlib.pyplot as plt

    if not subjects:
        raise ValueError("subjects is empty; pass at least one simulated subject.")
    fig, axes = plt.subplots(len(subjects), 2, figsize=(6.4, 3.1 * len(subjects)), squeeze=False)
    for row, (title, subject) in enumerate(subjects.items()):
        maps = (dti or {}).get(title) or subject_dti(subject)
        z = _slice_index(subject)
        fa = maps["fa"][:, :, z]
        rgb = np.clip(np.abs(maps["evec"][:, :, z]) * fa[..., None] * 1.6, 0, 1)
        md = maps["md"][:, :, z]
        for col, (img, kw, name) in enumerate(((rgb, {}, "colour FA"),
                                               (md, dict(cmap="gray", vmin=0, vmax=3.0), "MD (1e-3 mm²/s)"))):
            ax = axes[row, col]
            ax.imshow(np.swapaxes(img, 0, 1), origin="lower", **kw)
            for mask, colour, style in ((subject.lesion, "red", "solid"), (subject.infiltration, "yellow", "solid"),
                                        (subject.followup_lesion, "cyan", "dashed")):
                if mask[:, :, z].any():
                    ax.contour(mask[:, :, z].T.astype(float), levels=[0.5], colors=colour, linewidths=0.8,
                               linestyles=style)
            ax.set_title(f"{title}: {name}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    return fig


def plot_tissue_histograms(subjects: Mapping[str, object] | list, *, dti: Mapping[str, dict] | None = None,
                           purity: float = 0.8):
    """FA and MD histograms of WM, GM and CSF against literature ranges.

    Parameters
    ----------
    subjects : mapping or list of SimulatedSubject
        Healthy subjects (tumour voxels are excluded anyway).
    dti : mapping, optional
        Precomputed :func:`subject_dti` results under the same keys.
    purity : float
        Only voxels whose tissue fraction exceeds this enter a histogram
        (partial-volume voxels would blur the comparison).

    Returns
    -------
    matplotlib.figure.Figure
        Shaded bands are the target ranges in :data:`LITERATURE_RANGES`.
    """
    import matplotlib.pyplot as plt

    items = subjects.items() if isinstance(subjects, Mapping) else enumerate(subjects)
    values: dict[tuple[str, str], list[np.ndarray]] = {}
    for key, subject in items:
        maps = (dti or {}).get(key) or subject_dti(subject)
        healthy = subject.brain_mask & (subject.tumour_dseg == 0)
        for k, tissue in enumerate(("csf", "gm", "wm")):
            sel = healthy & (subject.tissue[k] > purity)
            for metric in ("fa", "md"):
                values.setdefault((tissue, metric), []).append(maps[metric][sel])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    colours = {"csf": "tab:blue", "gm": "tab:gray", "wm": "tab:orange"}
    for ax, metric, bins in ((axes[0], "fa", np.linspace(0, 1, 51)), (axes[1], "md", np.linspace(0, 3.5, 71))):
        for tissue in ("csf", "gm", "wm"):
            data = np.concatenate(values.get((tissue, metric), [np.empty(0)]))
            if data.size:
                ax.hist(data, bins=bins, density=True, histtype="step", color=colours[tissue],
                        label=f"{tissue.upper()} (n={data.size})")
            band = LITERATURE_RANGES.get((tissue, metric))
            if band:
                ax.axvspan(*band, color=colours[tissue], alpha=0.12)
        ax.set_xlabel("FA" if metric == "fa" else "MD (1e-3 mm²/s)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    axes[0].set_title("Fractional anisotropy (bands: literature ranges)", fontsize=9)
    axes[1].set_title("Mean diffusivity (bands: literature ranges)", fontsize=9)
    fig.tight_layout()
    return fig
