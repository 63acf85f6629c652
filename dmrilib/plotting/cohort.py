"""Figures of the simulated cohort: DTI slices with ground truth, tissue histograms,
the between-subject spread against literature bands, and acquisition artefacts."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the package
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["LITERATURE_RANGES", "subject_dti", "plot_cohort_slices", "plot_tissue_histograms", "plot_cohort_spread",
           "plot_artefact_examples"]

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
    """Axial slice through the largest lesion cross-section, or 55% up the volume without a lesion."""
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


_GROUP_COLOURS = {"healthy": "tab:blue", "patient": "tab:red"}
# (QC column, axis label, scale, absolute band: ("acceptance", name) or ("literature", key) or None)
_SPREAD = (
    ("wm_fa_median", "WM FA (median)", 1.0, ("acceptance", "wm_fa_median")),
    ("wm_md_median", "WM MD (1e-3 mm²/s)", 1e3, ("literature", ("wm", "md"))),
    ("brain_volume_ml", "brain volume (ml)", 1.0, None),
    ("ventricle_volume_ml", "ventricle volume (ml)", 1.0, None),
    ("b0_snr", "b0 SNR (WM / background σ)", 1.0, ("acceptance", "b0_snr_median")),
)
# CV statistics of dmrilib.simulate.qc.cohort_statistics shown against their bands.
_CV_BANDS = (("wm_fa_cv", "WM FA"), ("wm_md_cv", "WM MD"), ("brain_volume_cv", "brain volume"),
             ("csf_volume_cv", "ventricle volume"), ("b0_snr_cv", "b0 SNR"))


def _off_note(band, groups) -> str:
    """Note naming the band's realism groups that are off in this cohort (empty when none is)."""
    off = sorted(set(band.groups) - set(groups))
    return f"\n(n/a: {'+'.join(off)} off)" if off else ""


def plot_cohort_spread(qc, *, groups=frozenset(), bands=None, seed: int = 0):
    """Between-subject spread of the cohort's QC measurements against literature bands.

    Parameters
    ----------
    qc : pandas.DataFrame
        :func:`dmrilib.simulate.qc.cohort_qc`'s table (``group`` and, when
        present, ``scanner`` columns are used for colours and markers).
    groups : set of str
        The cohort's realism groups (``CohortConfig.groups``); bands whose
        groups are off are still drawn but labelled n/a.
    bands : mapping, optional
        Name -> :class:`~dmrilib.simulate.realism.Band`; default
        :data:`~dmrilib.simulate.realism.ACCEPTANCE`.
    seed : int
        Seed of the horizontal jitter of the points.

    Returns
    -------
    matplotlib.figure.Figure
        Top: one point per subject (controls blue, patients red; triangles
        for the second scanner) for WM FA, WM MD, brain and ventricle volume
        and b0 SNR, with the literature range shaded where one exists
        (:data:`~dmrilib.simulate.realism.ACCEPTANCE` for FA and SNR,
        :data:`LITERATURE_RANGES` for WM MD). Bottom: the between-subject
        coefficient of variation of each against its literature band.
    """
    import matplotlib.pyplot as plt

    from dmrilib.simulate.qc import cohort_statistics
    from dmrilib.simulate.realism import ACCEPTANCE

    bands = ACCEPTANCE if bands is None else bands
    if qc is None or len(qc) == 0:
        raise ValueError("qc is empty; pass dmrilib.simulate.qc.cohort_qc's table of at least one subject.")
    rng = np.random.default_rng(seed)
    group = qc["group"].astype(str) if "group" in qc else np.full(len(qc), "healthy")
    scanner = qc["scanner"].fillna(0).astype(int).to_numpy() if "scanner" in qc else np.zeros(len(qc), int)
    fig = plt.figure(figsize=(12.0, 6.6))
    grid = fig.add_gridspec(1, len(_SPREAD), left=0.055, right=0.99, top=0.88, bottom=0.5, wspace=0.42)
    bottom = fig.add_gridspec(1, 1, left=0.2, right=0.97, top=0.37, bottom=0.08)
    for k, (column, label, scale, band_ref) in enumerate(_SPREAD):
        ax = fig.add_subplot(grid[0, k])
        values = qc[column].to_numpy(dtype=float) * scale
        title = label
        if band_ref is not None:
            kind, key = band_ref
            if kind == "acceptance" and key in bands:
                band = bands[key]
                ax.axhspan(band.low * scale, band.high * scale, color="0.5", alpha=0.18, lw=0)
                title += _off_note(band, groups)
            elif kind == "literature" and key in LITERATURE_RANGES:
                ax.axhspan(*LITERATURE_RANGES[key], color="0.5", alpha=0.18, lw=0)
        for x, name in enumerate(("healthy", "patient")):
            for sc, marker in ((0, "o"), (1, "^")):
                sel = (np.asarray(group) == name) & (scanner == sc) & np.isfinite(values)
                if sel.any():
                    ax.scatter(x + rng.uniform(-0.18, 0.18, sel.sum()), values[sel], s=14, marker=marker,
                               color=_GROUP_COLOURS[name], alpha=0.8, lw=0,
                               label=f"{name}" + (" (scanner 2)" if sc else ""))
        ax.set_xticks([0, 1], ["controls", "patients"], fontsize=8)
        ax.set_xlim(-0.6, 1.6)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(title, fontsize=8.5)
        if k == 0:
            fig.legend(*ax.get_legend_handles_labels(), loc="upper center", ncol=4, fontsize=8, frameon=False)
    ax = fig.add_subplot(bottom[0, 0])
    stats = cohort_statistics(qc)
    top, labels = 0.0, []
    for row, (name, label) in enumerate(_CV_BANDS):
        band = bands.get(name)
        value = stats.get(name, (float("nan"), ""))[0]
        if band is not None:
            open_ended = not np.isfinite(band.high)
            high = max(band.low * 2.0, 0.6) if open_ended else band.high
            ax.barh(row, high - band.low, left=band.low, height=0.6, color="0.5", alpha=0.25, lw=0)
            text = f"band ≥ {band.low:g}" if open_ended else f"band {band.low:g}–{band.high:g}"
            ax.text(band.low, row + 0.3, text, ha="left", va="top", fontsize=7, color="0.35")
            top = max(top, high)
            label += _off_note(band, groups).replace("\n", " ")
        if np.isfinite(value):
            ax.plot([value], [row], "D", color="black", ms=6)
            ax.annotate(f"{value:.3f}", (value, row), xytext=(6, 4), textcoords="offset points", fontsize=8)
            top = max(top, value)
        labels.append(label)
    ax.set_yticks(range(len(_CV_BANDS)), labels, fontsize=8.5)
    ax.set_ylim(len(_CV_BANDS) - 0.4, -0.6)
    ax.set_xlim(0, top * 1.12 if top > 0 else 1.0)
    ax.set_xlabel("coefficient of variation between controls (SNR: between all subjects); grey: literature band",
                  fontsize=8.5)
    ax.tick_params(axis="x", labelsize=8)
    return fig


def _noise_map(data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Local noise level: robust spread (1.4826 MAD) of the residuals of an OLS tensor fit over the
    diffusion-weighted volumes, smoothed; the median keeps dropout and vibration out of it."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    from scipy import ndimage

    gtab = gradient_table(bvals, bvecs=bvecs)
    fit = TensorModel(gtab, fit_method="OLS", return_S0_hat=True).fit(data, mask=mask)
    dw = gtab.bvals > gtab.b0_threshold
    pred = np.nan_to_num(fit.predict(gtab)[..., dw])
    rms = 1.4826 * np.median(np.abs(data[..., dw] - pred), axis=-1)
    rms[~mask] = 0.0
    weight = ndimage.gaussian_filter(mask.astype(float), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = ndimage.gaussian_filter(rms, 1.0) / weight
    return np.where(mask, smooth, np.nan)


def _dropout_panel(ax: Axes, data: np.ndarray, dw: np.ndarray, mask: np.ndarray) -> None:
    """(a) A sagittal reformat through the strongest detected slice dropout, the slice marked by arrows."""
    from dmrilib.simulate.qc import outlier_slices

    flags, _ = outlier_slices(data[..., dw], mask)
    counts = mask.sum(axis=(0, 1)).astype(float)
    means = np.array([[data[:, :, z, v][mask[:, :, z]].mean() if counts[z] else 0.0 for z in range(mask.shape[2])]
                      for v in np.flatnonzero(dw)])
    if flags.any():
        # the flagged slice darkest against the same slice's median over the volumes
        ratio = np.where(flags, means / np.maximum(np.median(means, axis=0, keepdims=True), 1e-6), np.inf)
        v, z = np.unravel_index(np.argmin(ratio), ratio.shape)
        x_mid = int(np.round(np.argwhere(mask)[:, 0].mean()))
        ax.imshow(data[x_mid, :, :, np.flatnonzero(dw)[v]].T, origin="lower", cmap="gray")
        for x, marker in ((-0.5, ">"), (mask.shape[1] - 0.5, "<")):
            ax.plot([x], [z], marker=marker, color="orange", ms=7, clip_on=False)
        ax.set_title(f"(a) dropout: volume {np.flatnonzero(dw)[v]}, slice {z}\n"
                     f"({int(flags.sum())} outlier slices in {int(dw.sum())} volumes)", fontsize=8.5)
    else:
        x_mid = int(np.round(np.argwhere(mask)[:, 0].mean()))
        ax.imshow(data[x_mid, :, :, np.flatnonzero(dw)[0]].T, origin="lower", cmap="gray")
        ax.set_title("(a) no outlier slice detected", fontsize=8.5)
    ax.axis("off")


def _ringing_panel(ax: Axes, b0: np.ndarray, mask: np.ndarray, z_mid: int, sigma: float) -> None:
    """(b) The b0 profile along x through the brain's centre, the mask's edges dotted."""
    rows = np.argwhere(mask[:, :, z_mid])
    y_mid = int(np.round(rows[:, 1].mean())) if rows.size else mask.shape[1] // 2
    profile = b0[:, y_mid, z_mid]
    ax.plot(np.arange(profile.size), profile / sigma, color="black", lw=1)
    inside = np.flatnonzero(mask[:, y_mid, z_mid])
    if inside.size:
        for edge in (inside[0], inside[-1]):
            ax.axvline(edge, color="tab:blue", lw=0.6, ls=":")
    ax.set_xlabel("x (voxels)", fontsize=8)
    ax.set_ylabel("b0 / σ", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("(b) b0 across the brain edge (dotted: mask)", fontsize=8.5)


def _vibration_panel(fig: Figure, ax: Axes, data: np.ndarray, bvecs: np.ndarray, dw: np.ndarray, mask: np.ndarray,
                     z_mid: int) -> None:
    """(c) Mean DW signal of the mostly left-right gradient volumes over that of the others, on one axial slice."""
    lr = dw & (np.abs(bvecs[:, 0]) > 0.8)
    other = dw & (np.abs(bvecs[:, 0]) < 0.5)
    if lr.any() and other.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = data[:, :, z_mid][..., lr].mean(-1) / data[:, :, z_mid][..., other].mean(-1)
        ratio = np.where(mask[:, :, z_mid], ratio, np.nan)
        im = ax.imshow(ratio.T, origin="lower", cmap="RdBu", vmin=0.5, vmax=1.5)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
        ax.set_title(f"(c) DW signal, L-R gradients / others\n(axial slice {z_mid}; posterior down)", fontsize=8.5)
    else:
        ax.set_title("(c) no left-right gradient volumes", fontsize=8.5)
    ax.axis("off")


def _noise_panel(fig: Figure, ax: Axes, data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray,
                 z_mid: int, sigma: float) -> None:
    """(d) The tensor-fit residual noise map (:func:`_noise_map`) on one axial slice, in units of ``sigma``."""
    noise = _noise_map(data, bvals, bvecs, mask)[:, :, z_mid] / sigma
    im = ax.imshow(noise.T, origin="lower", cmap="magma", vmin=0.5, vmax=1.5)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    ax.set_title("(d) tensor-fit residual / σ\n(noise map; artefacts break the fit)", fontsize=8.5)
    ax.axis("off")


def plot_artefact_examples(data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, brain_mask: np.ndarray, *,
                           sigma: float, title: str = ""):
    """Acquisition artefacts of one subject, as a QC reader would look for them.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
        The subject's DWI (b0 and one shell), axial slices along z.
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3)
    brain_mask : ndarray of bool, shape (X, Y, Z)
    sigma : float
        Noise sigma of the background (the noise map is shown in its units).
    title : str
        Figure title (e.g. the subject).

    Returns
    -------
    matplotlib.figure.Figure
        Four panels: (a) a sagittal reformat of the diffusion-weighted volume
        with the strongest detected slice dropout
        (:func:`dmrilib.simulate.qc.outlier_slices`), the slice marked by arrows;
        (b) a b0 profile across the brain edge (ringing shows as ripples
        beside the edge); (c) mean DW signal of the volumes with a mostly
        left-right gradient over that of the others (vibration darkens the
        back of the head; white-matter anisotropy alone gives the pattern
        of the left-right tracts); (d) the noise level from the residuals
        of a tensor fit (their median absolute value over the volumes), in
        units of ``sigma``: it follows the noise map (coil/g-factor, smooth
        over the head) and rises where an artefact breaks the tensor model.
    """
    import matplotlib.pyplot as plt

    mask = np.asarray(brain_mask, dtype=bool)
    bvals, bvecs = np.asarray(bvals, float), np.asarray(bvecs, float)
    dw = bvals > 50
    if not mask.any() or dw.sum() < 6 or (~dw).sum() < 1:
        raise ValueError("plot_artefact_examples needs a non-empty brain mask, a b0 and at least 6 "
                         "diffusion-weighted volumes.")
    fig, axes = plt.subplots(1, 4, figsize=(12.0, 3.5))
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    z_mid = int(zs[0] + 0.6 * (zs[-1] - zs[0]))
    b0 = data[..., ~dw].mean(axis=-1)
    _dropout_panel(axes[0], data, dw, mask)
    _ringing_panel(axes[1], b0, mask, z_mid, sigma)
    _vibration_panel(fig, axes[2], data, bvecs, dw, mask, z_mid)
    _noise_panel(fig, axes[3], data, bvals, bvecs, mask, z_mid, sigma)
    if title:
        fig.suptitle(title, fontsize=9.5)
    fig.tight_layout()
    return fig
