"""Tumour realism (level L3): gliomas whose compartments look like real patients'.

The L0 glioma (:mod:`dmrilib.simulate.lesion`) has the same compartment
values in every patient of a grade, and its WHO II tumour diffuses less than
a glioblastoma's oedema, the reverse of the literature. With the ``tumour``
group on (:data:`dmrilib.simulate.realism.EFFECTS`), :func:`realistic_tumour`
draws, from the subject's tumour stream only:

``tumour_value_cv``
    Per-patient compartment values. Each patient draws the MD of its
    compartments relative to normal white matter, log-normally with this CV
    around the grade's literature ratio (:data:`MD_RATIO_TARGETS`), and the
    compartment parameters that give a pure voxel that MD are solved for
    (:func:`edema_severity`): the free-water fraction, radial and axial
    factors of the visible edema / non-enhancing tumour, the cellular
    diffusivities of the enhancing rim, the necrosis diffusivity.
``tumour_texture_sd``
    A smooth random field (wavelength about 8 mm) multiplying those values
    inside the tumour (log-sd ``tumour_texture_sd``).
``haemorrhage_rate``
    GBM only: a haemorrhage inside the solid tumour, 3-7 mm, with the
    values of :data:`HAEMORRHAGE` (dark b0 from the short T2*, low ADC, bright
    T1w from methaemoglobin).
``cyst_rate``
    WHO II/III only: a cyst of free water (CSF-like: dark FLAIR, dark T1w,
    high MD) inside the non-enhancing tumour, 4-9 mm.
``multifocal_rate``
    A second, smaller focus of the same grade 15-30 mm beyond the first's
    visible border, with its own shape and compartment values, part of the
    visible labels (it has no mass effect of its own: satellites are small).
``followup_treatment``
    The follow-up FLAIR shows a treated patient: a CSF-like resection cavity
    where the solid tumour was, a thin gliosis rim around it (FLAIR bright,
    not tumour) and radiation change of the surrounding white matter (a mild,
    broad FLAIR increase, not tumour); ``followup_lesion`` keeps only
    residual and recurrent tumour.
``remote_recurrence_rate``
    A recurrence 5-30 mm beyond the infiltration zone, in white matter, on
    the follow-up only (FLAIR bright, in ``followup_lesion``).

Each effect draws from its own child of the tumour stream, so switching one
off leaves the others' draws unchanged, and nothing is drawn with the group off.
"""
from __future__ import annotations

import functools

import numpy as np

from dmrilib.simulate import _portable as pmath
from dmrilib.simulate.anatomy import load_template, sample_template
from dmrilib.simulate.config import CohortConfig
from dmrilib.simulate.lesion import REALISM_CHANNELS, SIZE_RADII_MM, Blob, Tumour, TumourRealism, random_tumour
from dmrilib.simulate.realism import EFFECTS, group_active
from dmrilib.simulate.signal import D_FREE, small64d_scheme
from dmrilib.simulate.variability import Deformation, smooth_field

__all__ = ["MD_RATIO_TARGETS", "HAEMORRHAGE", "EDEMA_SHAPE", "tumour_realism_on", "realistic_tumour",
           "edema_severity", "voxel_values", "lesion_fractions", "lesion_signal",
           "lesion_structural", "site_info"]

#: Grade -> literature MD (ADC) ratio to normal white matter of each compartment.
#: ``edema`` is the visible non-enhancing part (WHO II/III tumour, GBM oedema).
#: WHO II: 1.6-2.2 (Server et al. 2009; Fan et al. 2006); GBM enhancing rim
#: ~1.26 (Sugahara et al. 1999; Kono et al. 2001); GBM oedema ~1.7 (ADC
#: ~1.3e-3, Lu et al. 2004); WHO III between the two (low confidence);
#: necrosis ~2.4e-3 mm^2/s, as at L0.
MD_RATIO_TARGETS = {
    "IV": dict(edema=1.7, cellular=1.26),
    "III": dict(edema=1.8, cellular=1.4),
    "II": dict(edema=1.9, cellular=1.5),
}
_NECROSIS_D = 2.4e-3
#: Free-water fraction, radial increase and axial decrease of the edema per
#: unit severity (the L0 glioblastoma's proportions: 0.35, 0.7, 0.1).
EDEMA_SHAPE = (0.35, 0.7, 0.1)
#: Intratumoural haemorrhage (subacute): relative b0 (EPI is T2*-weighted;
#: deoxy-/methaemoglobin shorten T2*), ADC 0.7e-3 mm^2/s (haematoma ADC
#: 0.5-0.8e-3, Atlas et al. 2000), T1w bright (methaemoglobin), FLAIR mixed.
HAEMORRHAGE = dict(adc=0.7e-3, s0=0.3, t1w=1.3, flair=0.7)
_GLIOSIS_FLAIR = 0.6  # relative FLAIR increase of the gliosis rim (as bright as moderate oedema)
_RECURRENCE_FLAIR = 0.8  # as the visible tumour (lesion.py: 1 + 0.8 * edema)
_TEXTURE_MM = 8.0
# Reference white matter for the MD ratios: L0 axial/radial diffusivity at a
# typical coherence, T2 weighting of the edema at full weight (subject.py).
_WM_REF = (1.35e-3 + 0.40e-3 * 0.6, 0.47e-3 - 0.17e-3 * 0.6)
_S0_TISSUE, _S0_WATER, _T2_EDEMA = 0.85 * 1.3, 2.0, 1.3
_LN2 = 0.6931471805599453
_TUMOUR_FIELDS = tuple(e.field for e in EFFECTS if e.group == "tumour")


def tumour_realism_on(config: CohortConfig) -> bool:
    """Whether any tumour effect of ``config`` differs from its L0 value."""
    return group_active(config, "tumour")


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive floats from :func:`pmath.exp` only (Newton on the mantissa): CPU-portable."""
    m, e = np.frexp(np.asarray(x, dtype=np.float64))
    y = m - 1.0
    for _ in range(6):
        y = y - 1.0 + m * pmath.exp(-y)
    return y + e * _LN2


@functools.lru_cache(maxsize=1)
def _directions() -> np.ndarray:
    scheme = small64d_scheme((1000.0,), 1)
    return scheme.bvecs[scheme.bvals > 0]


def _edema_md(k: float, b: float = 1000.0) -> float:
    """DTI mean diffusivity (log-linear, direction average) of pure WM edema at severity ``k``."""
    fw, perp, par = (k * s for s in EDEMA_SHAPE)
    cos2 = _directions()[:, 2] ** 2
    d_par, d_perp = _WM_REF[0] * (1 - par), _WM_REF[1] * (1 + perp)
    tissue = (1 - fw) * _S0_TISSUE * pmath.exp(-b * (d_perp + (d_par - d_perp) * cos2))
    water = fw * _S0_WATER * pmath.exp(np.float64(-b * D_FREE))
    s0 = (1 - fw) * _S0_TISSUE + fw * _S0_WATER
    return float(-_log((tissue + water) / s0).mean() / b)


def edema_severity(ratio: float) -> float:
    """Severity ``k`` (:data:`EDEMA_SHAPE`) whose pure edema has ``ratio`` times the MD of normal WM.

    Bisection on a monotone function; clipped to the reachable range (at most
    all free water).
    """
    ref = _edema_md(0.0)
    lo, hi = 0.0, 0.999 / EDEMA_SHAPE[0]
    if _edema_md(hi) <= ratio * ref:
        return hi
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        if _edema_md(mid) < ratio * ref:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _lognormal(rng: np.random.Generator, cv: float) -> float:
    """A factor with mean 1 and this CV (log-normal, clipped at 2.5 sd)."""
    if cv == 0:
        return 1.0
    sd = float(np.sqrt(_log(1.0 + cv * cv)))
    return float(pmath.exp(np.clip(rng.standard_normal(), -2.5, 2.5) * sd - 0.5 * sd * sd))


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.sqrt((v * v).sum())


@functools.lru_cache(maxsize=4)
def _site_candidates(voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Template points (MNI mm, 4 mm lattice) in parenchyma, and which of them are in white matter."""
    axes = [np.arange(-64, 65, 4.0), np.arange(-96, 64, 4.0), np.arange(-24, 72, 4.0)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)
    csf, gm, wm = sample_template(load_template(voxel_size), pts)
    keep = (gm + wm > 0.9) & (np.abs(pts[:, 0]) > 6)
    return pts[keep], wm[keep] > 0.8


def _to_head(tumour: Tumour, anatomy: np.ndarray) -> np.ndarray:
    """Head mm of pre-tumour anatomy point(s) (inverse of the mass effect, by fixed-point iteration)."""
    head = anatomy.astype(np.float32).copy()
    for _ in range(12):
        head += anatomy - tumour.displace(head)
    return head


def _site(rng: np.random.Generator, tumour: Tumour, deformation: Deformation, population, voxel_size: float,
          near_mm: float, far_mm: float, white: bool) -> np.ndarray | None:
    """A head-mm point in parenchyma (white matter if ``white``) ``near_mm``-``far_mm`` from the centre."""
    pts, is_wm = _site_candidates(voxel_size)
    if white:
        pts = pts[is_wm]
    centre = tumour.centre[None].astype(np.float32)
    centre_tpl = deformation(centre if population is None else population.warp(centre))[0]
    dist = np.sqrt(((pts - centre_tpl) ** 2).sum(axis=1))
    ok = np.flatnonzero((dist > near_mm) & (dist < far_mm))
    if ok.size == 0:
        return None
    tpl = pts[ok[rng.integers(ok.size)]] + rng.uniform(-2.0, 2.0, 3).astype(np.float32)
    anatomy = deformation.inverse(tpl[None])
    if population is not None:  # anatomy is scaled/warped before the deformation
        anatomy = population.inverse(anatomy).astype(np.float32)
    return _to_head(tumour, anatomy)[0].astype(float)


def realistic_tumour(config: CohortConfig, tumour: Tumour, deformation: Deformation, voxel_size: float,
                     seed: np.random.SeedSequence, population=None) -> Tumour:
    """``tumour`` with the tumour realism effects of ``config`` drawn from ``seed`` (the tumour stream).

    Parameters
    ----------
    config : CohortConfig
        Its tumour effects (``tumour_value_cv`` ... ``remote_recurrence_rate``).
    tumour : Tumour
        The L0 glioma (its draws are kept).
    deformation : Deformation
        Subject anatomy -> template, to place a second focus or a recurrence in tissue.
    population : dmrilib.simulate.population.Population, optional
        The population realism's warp of the anatomy (before ``deformation``).
    voxel_size : float
        Of the diffusion grid (picks the template).
    seed : numpy.random.SeedSequence
        The subject's tumour stream; each effect draws from its own child.
    """
    # The children seed.spawn() would give, without advancing ``seed`` (a second call draws the same).
    rngs = {name: np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key + (i,)))
            for i, name in enumerate(_TUMOUR_FIELDS)}
    grade, p = tumour.grade, tumour.params
    info: dict = {}
    # -- per-patient compartment values
    rng, cv = rngs["tumour_value_cv"], config.tumour_value_cv
    target = MD_RATIO_TARGETS[grade]
    edema_ratio = target["edema"] * _lognormal(rng, cv)
    cellular_ratio = target["cellular"] * _lognormal(rng, cv)
    k = edema_severity(edema_ratio)
    wm_md = (_WM_REF[0] + 2 * _WM_REF[1]) / 3
    cp, cq = 1.25e-3, 1.0e-3  # subject.TISSUE_PARAMS["cellular"]: keep its anisotropy
    values = dict(edema_fw=k * EDEMA_SHAPE[0], edema_perp=k * EDEMA_SHAPE[1], edema_par=k * EDEMA_SHAPE[2],
                  infiltration_factor=_lognormal(rng, cv),
                  cellular_factor=cellular_ratio * wm_md / ((cp + 2 * cq) / 3),
                  necrosis_d=min(_NECROSIS_D * _lognormal(rng, cv), 0.95 * D_FREE))
    info.update(tumour_md_ratio_edema=float(edema_ratio), tumour_md_ratio_cellular=float(cellular_ratio),
                tumour_necrosis_d=float(values["necrosis_d"]))
    # -- texture
    sd = config.tumour_texture_sd
    texture = None
    if sd > 0:
        # exp(t - sd^2 / 2) has mean 1: the texture moves values, not their average.
        texture = _OffsetField(smooth_field(rngs["tumour_texture_sd"], n_waves=16, wavelength=_TEXTURE_MM, std=sd),
                               -0.5 * sd * sd)
    # -- haemorrhage (GBM) and cyst (WHO II/III) inside the solid / visible tumour
    haem = cyst = None
    rng = rngs["haemorrhage_rate"]
    u, direction, place, size = rng.uniform(), _unit(rng), rng.uniform(0.1, 0.4), rng.uniform(3.0, 7.0)
    if grade == "IV" and u < config.haemorrhage_rate:
        haem = Blob(tumour.centre + direction * place * tumour.radius, float(size))
    rng = rngs["cyst_rate"]
    u, direction, place, size = rng.uniform(), _unit(rng), rng.uniform(0.0, 0.4), rng.uniform(4.0, 9.0)
    if grade in ("II", "III") and u < config.cyst_rate:
        cyst = Blob(tumour.centre + direction * place * tumour.radius, float(min(size, 0.4 * tumour.radius)))
    # -- second focus
    focus, focus_factor = None, 1.0
    rng = rngs["multifocal_rate"]
    if rng.uniform() < config.multifocal_rate:
        gap = tumour.radius * 1.1 + SIZE_RADII_MM["small"]
        centre = _site(rng, tumour, deformation, population, voxel_size, gap + 15.0, gap + 30.0, white=False)
        if centre is not None:
            focus = random_tumour(rng, grade, "small", centre)
            focus_factor = _lognormal(rng, cv)
    # -- treated follow-up
    cavity_rho, gliosis_mm, radiation_gain = None, 3.0, 0.0
    rng = rngs["followup_treatment"]
    solid, extent, gliosis, gain = (rng.uniform(0.9, 1.1), rng.uniform(0.5, 0.75), rng.uniform(2.0, 4.0),
                                    rng.uniform(0.15, 0.35))
    if config.followup_treatment:
        # Resection of the enhancing tumour (GBM, enhancing WHO III); of part of
        # the visible tumour otherwise (subtotal resection is common in LGG).
        cavity_rho = float(tumour.enhancing * solid if tumour.enhancing > 0 else extent)
        gliosis_mm, radiation_gain = float(gliosis), float(gain)
    values["radiation_gain"] = radiation_gain
    # -- remote recurrence (follow-up only)
    recurrence = None
    rng = rngs["remote_recurrence_rate"]
    if rng.uniform() < config.remote_recurrence_rate:
        beyond = tumour.radius * 1.3 + p["infiltration_mm"]
        centre = _site(rng, tumour, deformation, population, voxel_size, beyond + 12.0, beyond + 30.0, white=True)
        if centre is not None:
            recurrence = Blob(centre, float(rng.uniform(5.0, 9.0)))
    info.update(tumour_haemorrhage=haem is not None, tumour_cyst=cyst is not None,
                tumour_multifocal=focus is not None, followup_treated=cavity_rho is not None,
                followup_remote_recurrence=recurrence is not None)
    real = TumourRealism(values, texture, focus, float(focus_factor), haem, cyst, recurrence, cavity_rho,
                         gliosis_mm, 20.0, radiation_gain, info)
    return Tumour(tumour.grade, tumour.size_class, tumour.centre, tumour.radius, tumour.enhancing, tumour.shape,
                  tumour.growth_shape, {**tumour.params, **values}, real)


class _OffsetField:
    """A :class:`SmoothField` plus a constant (the texture's log-factor)."""

    def __init__(self, field, offset: float):
        self.field, self.offset = field, np.float32(offset)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return self.field(points) + self.offset


def voxel_values(params: dict, channels: np.ndarray, q: np.ndarray) -> tuple[dict, np.ndarray]:
    """Per-voxel edema values and infiltration for :func:`dmrilib.simulate.subject._compartments`.

    The patient's edema free water, radial and axial factors (in ``params``,
    :func:`realistic_tumour`) times the voxel's value factor (texture, second
    focus); the infiltration intensity ``q`` times the patient's factor.
    """
    v = channels[:, REALISM_CHANNELS.index("value")]
    out = dict(params)
    for key in ("edema_fw", "edema_perp", "edema_par"):
        out[key] = np.float32(params[key]) * v
    # Keep at least a little tissue: the free-water fraction stays below 1.
    out["edema_fw"] = np.minimum(out["edema_fw"], np.float32(0.95))
    out["edema_par"] = np.minimum(out["edema_par"], np.float32(0.7))
    return out, (q * np.float32(params["infiltration_factor"])).astype(np.float32)


def lesion_fractions(c: dict, channels: np.ndarray, params: dict, total: np.ndarray) -> dict:
    """Compartments ``c`` with a haemorrhage and a cyst, and the follow-up's channels.

    A haemorrhage or a cyst replaces that fraction of the voxel; a cyst is
    CSF-like water. Adds ``blood``, the cellular rim's ``cellular_factor``
    (patient value times texture), ``necrosis_d`` and, for the follow-up
    FLAIR, ``cavity`` (volume), ``gliosis``, ``radiation``, ``radiation_gain``
    and ``recurrence`` (weights).
    """
    ch = {name: channels[:, i] for i, name in enumerate(REALISM_CHANNELS)}
    other = np.clip(1.0 - ch["haemorrhage"] - ch["cyst"], 0.0, 1.0)
    out = dict(c)
    for key in ("csf", "gm", "wm", "fluid", "necrosis", "cellular"):
        out[key] = c[key] * other
    out["csf"] = out["csf"] + ch["cyst"] * total
    out.update(
        blood=ch["haemorrhage"] * total,
        cellular_factor=(np.float32(params["cellular_factor"]) * ch["value"]).astype(np.float32),
        necrosis_d=params["necrosis_d"],
        cavity=ch["cavity"] * total,
        gliosis=ch["gliosis"],
        radiation=ch["radiation"],
        radiation_gain=np.float32(params["radiation_gain"]),
        recurrence=ch["recurrence"],
    )
    return out


def lesion_signal(c: dict, b: np.ndarray) -> np.ndarray:
    """Diffusion signal (N, G) of the haemorrhage (isotropic, :data:`HAEMORRHAGE`), before the gain."""
    return (c["blood"] * np.float32(HAEMORRHAGE["s0"]))[:, None] * pmath.exp(-b * np.float32(HAEMORRHAGE["adc"]))[None]


def lesion_structural(img: np.ndarray, c: dict, contrast: str, k: dict, followup: bool) -> np.ndarray:
    """A structural image ``img`` with the haemorrhage and, at follow-up, the treated tumour.

    Follow-up FLAIR: the remote recurrence is as bright as visible tumour,
    the gliosis rim nearly so, radiation change raises white matter by the
    patient's gain, and the cavity is CSF.
    """
    img = img + c["blood"] * HAEMORRHAGE[contrast]
    if followup and contrast == "flair":
        tissue = c["gm"] * k["gm"] + c["wm"] * k["wm"]
        rec = np.clip(c["recurrence"] - np.maximum(c["edema"], c["grown"]), 0, 1)
        img = img + tissue * (_RECURRENCE_FLAIR * rec + _GLIOSIS_FLAIR * c["gliosis"])
        img = img + c["wm"] * k["wm"] * c["radiation_gain"] * c["radiation"]
        total = c["csf"] + c["gm"] + c["wm"] + c["fluid"] + c["necrosis"] + c["cellular"] + c["blood"]
        cav = np.clip(c["cavity"] / np.maximum(total, 1e-6), 0, 1)
        img = img * (1 - cav) + c["cavity"] * k["csf"]
    return img


def site_info(real: TumourRealism, to_scanner) -> dict:
    """Diffusion-scanner mm centres and radii of the haemorrhage, cyst, second focus and recurrence."""
    out = {}
    for name, blob in (("haemorrhage", real.haemorrhage), ("cyst", real.cyst), ("recurrence", real.recurrence),
                       ("focus", real.focus)):
        if blob is not None:
            centre = to_scanner(np.asarray(blob.centre, dtype=np.float32)[None])[0]
            out[f"tumour_{name}_centre_mm"] = [float(v) for v in centre]
            out[f"tumour_{name}_radius_mm"] = float(blob.radius)
    return out
