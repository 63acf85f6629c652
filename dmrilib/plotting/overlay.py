"""One patient's anomaly maps over their own scan: :func:`patient_overlay`.

The figure a clinician looks at first: for each model a row of axial,
coronal and sagittal slices through the lesion (or the map's hottest voxel),
the map drawn in colour above its 95th percentile inside the brain over the
patient's mean b0, the lesion outlined. Images are turned to the closest RAS
orientation of their affine before drawing, so every patient is shown the same
way whatever the scanner's voxel order: neurological convention, the patient's
right on the image's right.

The function draws only; :mod:`dmrilib.export` decides what to show and
writes the files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import nibabel as nib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from numpy.typing import ArrayLike

__all__ = ["patient_overlay", "CONVENTION"]

#: Stated in every overlay's title: how left and right are shown.
CONVENTION = "neurological convention: patient's right on the image's right (R/L marked)"

# (name, axis the slice cuts, (horizontal axis, vertical axis), edge letters (left, right))
_VIEWS = (
    ("axial", 2, (0, 1), ("L", "R")),
    ("coronal", 1, (0, 2), ("L", "R")),
    ("sagittal", 0, (1, 2), ("P", "A")),
)


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` with its voxel axes flipped/permuted to the closest RAS order, and that grid's affine."""
    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape[:3])
    return np.ascontiguousarray(out), new_affine


def _centre(lesion: np.ndarray) -> tuple[int, int, int]:
    """The lesion voxel nearest the lesion's centroid (the centroid of a crescent lies outside it)."""
    coords = np.argwhere(lesion)
    centroid = coords.mean(axis=0)
    return tuple(int(v) for v in coords[np.argmin(((coords - centroid) ** 2).sum(axis=1))])


def _hottest(score: np.ndarray, brain: np.ndarray) -> tuple[int, int, int]:
    """The voxel of the map's maximum inside the brain."""
    masked = np.where(brain, score, -np.inf)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(masked)), score.shape))


def _cut(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice ``index`` across ``axis``, as an image: rows along the vertical axis."""
    # (horizontal, vertical) -> rows = vertical, for imshow(origin="lower")
    return np.take(volume, index, axis=axis).T


def _checked(background: ArrayLike, maps: Mapping[str, ArrayLike], lesion: ArrayLike | None, affine: ArrayLike,
             brain_mask: ArrayLike | None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None,
                                                    np.ndarray, np.ndarray]:
    """The inputs as arrays (background, maps, lesion, brain, affine), all on one 3D grid, else a ValueError."""
    background = np.asarray(background, dtype=np.float32)
    affine = np.asarray(affine, dtype=float)
    if not maps:
        raise ValueError("patient_overlay: no maps to draw; pass at least one label -> map.")
    if affine.shape != (4, 4):
        raise ValueError(f"patient_overlay: affine must be 4x4, got shape {affine.shape}.")
    if background.ndim != 3:
        raise ValueError(f"patient_overlay: background must be 3D (X, Y, Z), got shape {background.shape}.")
    shape = background.shape
    arrays = {label: np.asarray(m, dtype=np.float32) for label, m in maps.items()}
    lesion = None if lesion is None else np.asarray(lesion, dtype=bool)
    brain = background > 0.01 * float(background.max()) if brain_mask is None else np.asarray(brain_mask, bool)
    for name, array in [*arrays.items(), ("lesion", lesion), ("brain_mask", brain)]:
        if array is not None and array.shape != shape:
            raise ValueError(f"patient_overlay: {name} has shape {array.shape}, the background {shape}; "
                             "put every image on the same grid first.")
    return background, arrays, lesion, brain, affine


@dataclass(frozen=True)
class _Scene:
    """Every image of the figure turned to RAS, with what all its rows share."""

    background: np.ndarray
    ras: np.ndarray  # voxel-to-world affine of the RAS grid
    maps: dict[str, np.ndarray]
    brain: np.ndarray
    lesion: np.ndarray | None
    voxel: np.ndarray  # voxel size (mm) along each RAS axis: the images' aspect
    grey_max: float  # top of the background's grey scale
    lesion_centre: tuple[int, int, int] | None  # None: no lesion voxel, each row cut through its maximum

    @classmethod
    def of(cls, background: np.ndarray, maps: dict[str, np.ndarray], lesion: np.ndarray | None, brain: np.ndarray,
           affine: np.ndarray) -> _Scene:
        """Turn checked inputs (see :func:`_checked`) to RAS and derive the grey scale and the lesion's centre."""
        background, ras = _to_ras(background, affine)
        maps = {label: _to_ras(m, affine)[0] for label, m in maps.items()}
        brain = _to_ras(brain, affine)[0]
        lesion = None if lesion is None else _to_ras(lesion, affine)[0]
        if not brain.any():
            brain = np.ones(background.shape, bool)
        voxel = np.sqrt((ras[:3, :3] ** 2).sum(axis=0))
        grey_max = float(np.percentile(background[brain], 99.5)) or float(background.max()) or 1.0
        has_lesion = lesion is not None and bool(lesion.any())
        lesion_centre = _centre(lesion) if has_lesion else None
        return cls(background, ras, maps, brain, lesion, voxel, grey_max, lesion_centre)

    @property
    def has_lesion(self) -> bool:
        """Whether the lesion mask has voxels (then every row is cut through it and outlined)."""
        return self.lesion_centre is not None


def _colour_range(score: np.ndarray, brain: np.ndarray, percentile: float) -> tuple[float, float]:
    """(low, high) of a map's colour scale: from its ``percentile`` inside the brain to its maximum there."""
    inside = score[brain]
    lo = float(np.percentile(inside, percentile))
    hi = float(inside.max())
    if not hi > lo:  # a flat map: draw its top voxels, scale one step wide
        hi = lo + max(abs(lo), 1.0) * 1e-3
    return lo, hi


def _draw_view(ax: Axes, scene: _Scene, shown: np.ma.MaskedArray, centre: tuple[int, int, int], world: np.ndarray,
               view: tuple, scale: tuple[float, float], cmap: str) -> AxesImage:
    """One slice of a row: the background, the map above its threshold, the lesion outline; returns the map's image."""
    name, axis, (h, v), (left, right) = view
    index = centre[axis]
    aspect = scene.voxel[v] / scene.voxel[h]
    ax.imshow(_cut(scene.background, axis, index), cmap="gray", vmin=0.0, vmax=scene.grey_max, origin="lower",
              aspect=aspect, interpolation="nearest")
    image = ax.imshow(_cut(shown, axis, index), cmap=cmap, vmin=scale[0], vmax=scale[1], alpha=0.75,
                      origin="lower", aspect=aspect, interpolation="nearest")
    if scene.has_lesion:
        outline = _cut(scene.lesion, axis, index).astype(float)
        if outline.any() and (outline == 0).any():
            ax.contour(outline, levels=[0.5], colors="cyan", linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{name} {'xyz'[axis]} = {world[axis]:.0f} mm", fontsize=9)
    for x, letter, align in ((0.02, left, "left"), (0.98, right, "right")):
        ax.text(x, 0.5, letter, transform=ax.transAxes, color="white", fontsize=9, ha=align, va="center")
    return image


def _draw_row(fig: Figure, row_axes: np.ndarray, label: str, score: np.ndarray, scene: _Scene, percentile: float,
              cmap: str) -> None:
    """One model's row: three orthogonal slices through the lesion (or the map's maximum) and a colour bar."""
    scale = _colour_range(score, scene.brain, percentile)
    shown = np.ma.masked_where(~(scene.brain & (score > scale[0])), score)
    centre = scene.lesion_centre if scene.has_lesion else _hottest(score, scene.brain)
    # slice positions in scanner mm, which any viewer shows, rather than voxel indices of the turned grid
    world = scene.ras[:3, :3] @ np.asarray(centre, dtype=float) + scene.ras[:3, 3]
    image = None
    for c, view in enumerate(_VIEWS):
        image = _draw_view(row_axes[c], scene, shown, centre, world, view, scale, cmap)
        if c == 0:
            row_axes[c].set_ylabel(label, fontsize=9)
    fig.colorbar(image, ax=list(row_axes), shrink=0.85, label=f"score (> p{percentile:g} in brain)")


def patient_overlay(background: ArrayLike, maps: Mapping[str, ArrayLike], lesion: ArrayLike | None = None, *,
                    affine: ArrayLike, title: str = "", brain_mask: ArrayLike | None = None,
                    percentile: float = 95.0, cmap: str = "hot") -> Figure:
    """Anomaly maps of one patient over their scan, one row per model, three orthogonal slices.

    Parameters
    ----------
    background : ndarray, shape (X, Y, Z)
        Grey-scale image on the maps' grid (e.g. the mean b0 of the DWI).
    maps : mapping of str to ndarray, shape (X, Y, Z)
        Row label (e.g. ``"DAE lsd512-sigmoid"``) -> anomaly map; higher is
        more anomalous. Each row gets its own colour scale.
    lesion : ndarray of bool, shape (X, Y, Z), optional
        Lesion mask, drawn as an outline. When it has voxels, every row is cut
        through the lesion voxel nearest its centroid; otherwise each row
        through its own map's maximum inside the brain.
    affine : ndarray, shape (4, 4)
        Voxel-to-world transform of the grid (the DWI's). Used to show every
        image in the closest RAS orientation with its true voxel aspect.
    title : str
        First line of the title; the display convention is added below it.
    brain_mask : ndarray of bool, shape (X, Y, Z), optional
        Where the percentile is taken and the map drawn; default: voxels
        where the background is above 1% of its maximum.
    percentile : float
        The map is drawn above this percentile of its values inside the brain.
    cmap : str
        Colour map of the anomaly maps.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If there are no maps, an array is not 3D or the shapes differ, or the
        affine is not 4x4.
    """
    background, arrays, lesion, brain, affine = _checked(background, maps, lesion, affine, brain_mask)
    scene = _Scene.of(background, arrays, lesion, brain, affine)
    fig = Figure(figsize=(10.0, 3.1 * len(scene.maps) + 0.8), layout="constrained")
    axes = fig.subplots(len(scene.maps), 3, squeeze=False)
    for r, (label, score) in enumerate(scene.maps.items()):
        _draw_row(fig, axes[r], label, score, scene, percentile, cmap)
    where = "through the lesion (cyan outline)" if scene.has_lesion else "through each map's maximum (no lesion mask)"
    fig.suptitle(f"{title}\nslices {where}; {CONVENTION}", fontsize=10)
    return fig
