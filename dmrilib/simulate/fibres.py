"""Fibre orientation field in template (MNI) space.

How it is built
---------------
A Hessian or structure tensor of the white-matter probability cannot tell the
direction of a tract inside a flat sheet of white matter (the corpus callosum
body is such a sheet and does not come out left-right). So the major tracts
are prescribed as polylines in MNI millimetres, each with a radius:

* corpus callosum: six left-right arcs from genu to splenium, rising laterally
  into the centrum semiovale;
* corticospinal tract: peduncle -> posterior limb of the internal capsule ->
  corona radiata (superior-inferior), both hemispheres;
* cingulum: above the corpus callosum, anterior-posterior;
* superior longitudinal fasciculus: lateral, anterior-posterior;
* inferior fronto-occipital fasciculus: external capsule to occipital lobe,
  anterior-posterior.

A voxel near a tract (Gaussian weight of its distance to the nearest segment)
takes that segment's direction. Where two tract families overlap with
directions more than 45 degrees apart the voxel gets two populations (e.g.
callosal fibres crossing the corticospinal tract in the corona radiata).
Elsewhere in white matter the direction is a distance-weighted orientation
average of all tracts (the principal eigenvector of the weighted sum of
``d d^T``), so the field continues the nearest tracts smoothly. In grey
matter the direction is normal to the grey/white boundary (radial, as
cortical columns are); GM anisotropy is low anyway.

Limits: the tracts are idealised tubes (no fanning, no U-fibres, no optic
radiation, cerebellar peduncles or anterior thalamic radiation), so deep white
matter away from the listed tracts is only plausible, not anatomical.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dmrilib._atomic import atomic_path
from dmrilib.simulate import _portable as pmath
from dmrilib.simulate.anatomy import cache_dir, load_template, sample_template

__all__ = ["FibreField", "TRACTS", "fibre_field", "tract_polylines"]

#: Left-hemisphere (x < 0) polylines in MNI mm, mirrored for the right.
#: name -> (points, radius mm, both_hemispheres)
TRACTS: dict[str, tuple[tuple[tuple[float, float, float], ...], float, bool]] = {
    "cst": (((-14, -20, -22), (-19, -17, -6), (-23, -15, 8), (-25, -17, 28), (-26, -20, 50)), 5.0, True),
    "cingulum": (((-8, 30, 10), (-9, 20, 26), (-9, 0, 33), (-9, -20, 36), (-9, -40, 31), (-10, -52, 15)), 4.0, True),
    "slf": (((-34, 18, 24), (-37, 0, 31), (-38, -20, 33), (-38, -40, 30), (-35, -56, 26)), 5.5, True),
    "ifof": (((-28, 32, 2), (-30, 10, -4), (-32, -10, -2), (-34, -40, 0), (-30, -75, 4)), 5.0, True),
}


def _callosum() -> list[tuple[np.ndarray, float]]:
    # (y, midline z) of the arcs from genu to splenium.
    arcs = ((30, 8), (18, 18), (6, 22), (-6, 24), (-18, 22), (-30, 16))
    xs = np.array([-42.0, -30.0, -18.0, -8.0, 0.0, 8.0, 18.0, 30.0, 42.0])
    rise = np.array([18.0, 9.0, 3.0, 0.5, 0.0, 0.5, 3.0, 9.0, 18.0])
    return [(np.stack([xs, np.full_like(xs, y), z + rise], axis=1), 4.5) for y, z in arcs]


def tract_polylines() -> dict[str, list[tuple[np.ndarray, float]]]:
    """Every tract family as a list of ``(points (P, 3) mm, radius mm)`` polylines."""
    out: dict[str, list[tuple[np.ndarray, float]]] = {"cc": _callosum()}
    for name, (pts, radius, both) in TRACTS.items():
        left = np.asarray(pts, dtype=float)
        out[f"{name}_l"] = [(left, radius)]
        if both:
            out[f"{name}_r"] = [(left * np.array([-1.0, 1.0, 1.0]), radius)]
    return out


@dataclass(frozen=True)
class FibreField:
    """Fibre populations on a regular template-space grid.

    Attributes
    ----------
    affine : ndarray (4, 4)
        Grid voxel -> MNI mm.
    v1, v2 : ndarray (X, Y, Z, 3) float32
        Unit directions of the first and second population.
    crossing : ndarray (X, Y, Z) float32
        Volume fraction of the second population within WM (0 where single).
    coherence : ndarray (X, Y, Z) float32
        0 (background white matter) .. 1 (core of a prescribed tract).
    family : ndarray (X, Y, Z) int16
        Index into ``families`` of the dominant tract, -1 for background.
    families : tuple of str
    """

    affine: np.ndarray
    v1: np.ndarray
    v2: np.ndarray
    crossing: np.ndarray
    coherence: np.ndarray
    family: np.ndarray
    families: tuple[str, ...]


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances (N, S) from points (N, 3) to segments a->b (S, 3)."""
    ab = b - a
    t = np.clip(((points[:, None, :] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1)[None], 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1)


# 2: built with dmrilib.simulate._portable (CPU-independent bits)
_CACHE_VERSION = 2


@functools.lru_cache(maxsize=4)
def fibre_field(voxel_size: float) -> FibreField:
    """Fibre populations on a template grid of spacing ``voxel_size`` mm.

    Cached in memory and on disk beside the template cache (see
    :func:`dmrilib.simulate.anatomy.load_template`). See the module docstring
    for how the field is built and its limits.
    """
    path = cache_dir() / f"fibres-v{_CACHE_VERSION}-{float(voxel_size):g}mm.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return FibreField(**{k: data[k] for k in _ARRAYS}, families=tuple(str(f) for f in data["families"]))
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below
    field = _build_fibre_field(voxel_size)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, families=np.array(field.families), **{k: getattr(field, k) for k in _ARRAYS})
    except OSError:
        pass
    return field


_ARRAYS = ("affine", "v1", "v2", "crossing", "coherence", "family")


def _build_fibre_field(voxel_size: float) -> FibreField:
    template = load_template(voxel_size)
    step = float(voxel_size)
    lo = np.array([-80.0, -116.0, -74.0])
    hi = np.array([80.0, 80.0, 90.0])
    shape = tuple(int(v) for v in np.ceil((hi - lo) / step) + 1)
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = lo
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    pts = idx * step + lo
    csf, gm, wm = sample_template(template, pts)
    inside = (gm + wm) > 0.05
    p = pts[inside]
    n = p.shape[0]

    fams = tract_polylines()
    names = tuple(fams)
    fam_w = np.zeros((len(names), n), dtype=np.float32)
    fam_dir = np.zeros((len(names), n, 3), dtype=np.float32)
    avg = np.zeros((n, 3, 3), dtype=np.float64)
    for f, name in enumerate(names):
        for line, radius in fams[name]:
            a, b = line[:-1], line[1:]
            seg_dir = (b - a) / np.linalg.norm(b - a, axis=1, keepdims=True)
            outer = (seg_dir[:, :, None] * seg_dir[:, None, :]).reshape(-1, 9)
            for start in range(0, n, 20000):
                sl = slice(start, start + 20000)
                d = _segment_distance(p[sl], a, b)
                near = d.argmin(1)
                dmin = d[np.arange(d.shape[0]), near]
                w = pmath.exp(-0.5 * (dmin / radius) ** 2).astype(np.float32)
                better = w > fam_w[f, sl]
                fam_w[f, sl] = np.where(better, w, fam_w[f, sl])
                fam_dir[f, sl] = np.where(better[:, None], seg_dir[near], fam_dir[f, sl])
                # Broad weights continue the tracts into background white matter.
                wb = pmath.exp(-0.5 * (d / 14.0) ** 2)
                avg[sl] += pmath.matmul(wb, outer).reshape(-1, 3, 3)

    order = np.argsort(-fam_w, axis=0)
    first, second = order[0], order[1]
    cols = np.arange(n)
    w1 = fam_w[first, cols]
    w2 = fam_w[second, cols]
    d1 = fam_dir[first, cols]
    d2 = fam_dir[second, cols]

    _, vecs = pmath.eigh3(avg + 1e-9 * np.eye(3))
    background = vecs[..., -1].astype(np.float32)

    # Grey matter: normal to the GM/WM boundary.
    wm_grid = np.zeros(shape, dtype=np.float32)
    wm_grid.reshape(-1)[inside] = wm[inside]
    grad = np.stack(np.gradient(ndimage.gaussian_filter(wm_grid, 1.0)), axis=-1).reshape(-1, 3)[inside]
    gnorm = np.linalg.norm(grad, axis=1, keepdims=True)
    radial = np.where(gnorm > 1e-6, grad / np.maximum(gnorm, 1e-6), background)

    wm_frac = wm[inside] / np.maximum(gm[inside] + wm[inside], 1e-6)
    tract_on = w1 > 0.3
    v1 = np.where(tract_on[:, None], d1, background)
    v1 = np.where((wm_frac < 0.5)[:, None] & ~tract_on[:, None], radial, v1)
    cos12 = np.abs((d1 * d2).sum(1))
    crosses = tract_on & (w2 > 0.3) & (cos12 < pmath.cos(np.deg2rad(45.0)))
    # Background voxels next to a tract keep part of the tract's direction as
    # a second population, so the field has no sharp seam at the tube edge.
    seam = ~tract_on & (w1 > 0.1)
    v2 = np.where(crosses[:, None], d2, np.where(seam[:, None], d1, v1))
    crossing = np.where(
        crosses, 0.5 * np.clip(w2 / np.maximum(w1, 1e-6), 0, 1), np.where(seam, 0.5 * w1 / 0.3, 0.0)
    ).astype(np.float32)

    def _grid(values: np.ndarray, fill) -> np.ndarray:
        out = np.full((int(np.prod(shape)),) + values.shape[1:], fill, dtype=values.dtype)
        out[inside] = values
        return out.reshape(shape + values.shape[1:])

    default = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    return FibreField(
        affine=affine,
        v1=_grid(v1.astype(np.float32), default),
        v2=_grid(v2.astype(np.float32), default),
        crossing=_grid(crossing, np.float32(0)),
        coherence=_grid(np.clip(w1, 0, 1).astype(np.float32), np.float32(0)),
        family=_grid(np.where(tract_on, first, -1).astype(np.int16), np.int16(-1)),
        families=names,
    )
