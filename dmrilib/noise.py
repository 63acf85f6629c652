"""Just-out-of-distribution (JOOD) disturbances for training RecDiscNet.

Ellipsoid patches are filled with noise drawn from a normal or uniform
distribution whose mean is the mean brain attenuation ("full", 0.4) or half of
it ("half", 0.2), with the spread of brain attenuation (sd 0.12). The noise has
one of three appearances:

* ``random``: an independent value per voxel and channel;
* ``directional``: one value per channel (diffusion direction), constant in space;
* ``isotropic``: the same value in every channel.

``mix`` draws the distribution and/or appearance anew for every patch. The
variant id ``<distribution>-<appearance>-<mean>`` (e.g.
``normal-directional-half``, ``mix-mix-full``) names one configuration of the
paper's Table 2. Everything runs in torch on the batch's device and draws only
from the ``torch.Generator`` passed in, without host-device synchronisation.

Paper or authors' code (:mod:`dmrilib.fidelity`, rows 3, 5, 6, 7, 18)
----------------------------------------------------------------------
The authors' ``DataProcessing/anomaly_generation.py`` differs from the article
in five ways; each is a :class:`JoodConfig` field whose default is the code:

* row 3, ``isotropic``: the code multiplies the whole patch by a single number,
  so an isotropic patch is one constant in all voxels and all directions
  (``per_patch``); the article describes one value per voxel shared by the
  directions (``per_voxel``).
* row 5, ``geometry``: the code draws an integer half-size ``r`` in 5..11, a
  box of side ``2r`` and an axis-aligned ellipsoid in it with semi-axes
  ``r * U(0.5, 1)`` each; the box spans ``c - r`` to ``c + r - 1`` on every
  axis, so the ellipsoid's centre is ``c - 0.5``, where each coordinate of
  ``c`` is the grid centre (32, 40, 32 on its 64 x 80 x 64 grid) plus a random
  sign times an integer 4..20. The signs are drawn once per patch; the
  magnitudes are drawn again until the brain mask without CSF (eroded by a
  3^3 cube) holds both ``c`` and ``c + (1, 1, 1)`` (``centred``). The article
  says only that the ellipsoids vary in size, orientation and axis lengths
  and lie in the brain; this package used rotated ellipsoids with semi-axes
  ``U(radius)`` centred on any brain voxel (``anywhere``).
* row 6, ``uniform_width``: the code's uniform noise is ``U(mean - sd, mean + sd)``,
  width 0.24; the article sets the range to the sd, width 0.12.
* row 7, ``mix``: the code's Mix picks isotropic with probability 0.34
  (uniform values only), random 0.33 and directional 0.33 (normal or uniform
  with equal odds) (``weighted``); the article gives no weights; this package
  used thirds with normal/uniform halves for every appearance (``thirds``).

Row 18, ``insertion``: the code zeroes the signal where the patch's noise is
positive and then adds the patch, so a positive value replaces the signal
and a negative one (normal draws only: about 5 % of a *half* patch) is added
to it; nothing is clipped, and the training target is the whole ellipsoid
(``authors``). The article is silent; this package replaced the patch,
clipped it to [0, 1] and marked the voxels that changed (``replace``).
Not reproduced on either side: the code inserts a volume's patches one
after the other, each time applying everything drawn so far again, so the
first patch's negative values are added twice, the second patch's box (not
only its ellipsoid) removes the first patch from the target but not from
the input, and the second patch's negative values add to the first patch
where they meet; here the patches are inserted at once and the later one
owns any overlap.

Also still different from the code: normal draws are truncated at about
4.75 sd by the inverse-CDF sampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from dmrilib.variants import APPEARANCES, DISTRIBUTIONS, MEANS, parse_recdisc_variant

__all__ = ["JoodConfig", "add_jood", "noise_distribution_samples", "noise_distribution_label", "DISTRIBUTIONS",
           "APPEARANCES", "MEANS", "ISOTROPIC_MODES", "GEOMETRIES", "MIX_MODES", "INSERTIONS"]

_BASE_APPEARANCES = ("random", "directional", "isotropic")
#: Row 3: one isotropic value per patch (code) or per voxel (paper).
ISOTROPIC_MODES = ("per_patch", "per_voxel")
#: Row 5: axis-aligned patches near the grid centre (code) or rotated ones anywhere in the brain (paper).
GEOMETRIES = ("centred", "anywhere")
#: Row 7: Mix appearance odds 0.34/0.33/0.33 with uniform isotropic patches (code) or thirds (paper).
MIX_MODES = ("weighted", "thirds")
#: Row 18: positive noise replaces, negative noise adds, no clipping, target = ellipsoid (code), or the
#: patch replaced and clipped to [0, 1], target = changed voxels (this package's earlier reading).
INSERTIONS = ("authors", "replace")
# Row 7, code: a Mix patch is isotropic above this draw, random below the next one, directional between.
_WEIGHTED_ISOTROPIC_ABOVE = 0.66
_WEIGHTED_RANDOM_BELOW = 0.33


def _integers_in(lo: float, hi: float) -> tuple[int, int]:
    """The smallest and largest integer in ``[lo, hi]``."""
    return int(math.ceil(lo)), int(math.floor(hi))


@dataclass(frozen=True)
class JoodConfig:
    """One JOOD configuration.

    The defaults of ``isotropic``, ``geometry``, ``centre_offset``,
    ``uniform_width``, ``mix`` and ``insertion`` are the authors' code; the
    article's values are ``per_voxel``, ``anywhere``, (unused), ``0.12``,
    ``thirds`` and ``replace`` (:mod:`dmrilib.fidelity` rows 3, 5, 6, 7, 18).

    Parameters
    ----------
    distribution : {"normal", "uniform", "mix"}
    appearance : {"random", "directional", "isotropic", "mix"}
    mean : {"full", "half"}
        Noise mean ``mean_full`` or ``mean_full / 2``.
    mean_full : float
        Mean brain attenuation (paper cohort: 0.4).
    sd : float
        Standard deviation of the normal noise (brain attenuation sd, 0.12).
    uniform_width : float
        Width (max - min) of the uniform noise, centred on the mean. Code:
        0.24 (mean +- sd); paper: 0.12 (the range "chosen as the sd").
    radius : (float, float)
        Patch size range in voxels (paper grid: 5 to 11); shrink it with the
        grid for small profiles. ``anywhere``: the semi-axes are uniform in
        it. ``centred``: the half-size is a uniform integer in it (at least
        one integer >= 1 must lie in the range) and each semi-axis is the
        half-size times U(0.5, 1).
    patch_probs : tuple of float
        Probability of 0, 1, 2, ... patches per volume (paper: 0.2, 0.6, 0.2).
    isotropic : {"per_patch", "per_voxel"}
        Isotropic noise is one value per patch (code) or one value per
        voxel (paper), shared by all channels either way.
    geometry : {"centred", "anywhere"}
        ``centred`` (code): axis-aligned ellipsoids whose box centre lies at
        the grid centre +- ``centre_offset`` voxels per axis, inside the
        ``centre_region`` of :func:`add_jood`. ``anywhere`` (paper as this
        package read it): rotated ellipsoids centred on any brain voxel.
    centre_offset : (float, float)
        ``centred`` only: range of the integer offset of the patch centre
        from the grid centre, per axis, in voxels (code: 4 to 20 on the
        64 x 80 x 64 grid; small profiles halve it). At least one integer
        must lie in the range.
    mix : {"weighted", "thirds"}
        Appearance odds of a ``mix`` patch. ``weighted`` (code): isotropic
        0.34, random 0.33, directional 0.33, and an isotropic Mix patch takes
        uniform values when the distribution is ``mix``. ``thirds`` (paper as
        this package read it): one third each, distribution as configured.
    insertion : {"authors", "replace"}
        How a patch enters the volume (:func:`add_jood`). ``authors`` (code):
        where the noise value is positive it replaces the signal, where it is
        negative it is added to the signal, nothing is clipped, and the patch
        mask is the whole ellipsoid. ``replace`` (the article is silent; this
        package's earlier choice): the noise, clipped to [0, 1], replaces the
        signal, and the patch mask holds the voxels that changed.
    """

    distribution: Literal["normal", "uniform", "mix"] = "normal"
    appearance: Literal["random", "directional", "isotropic", "mix"] = "random"
    mean: Literal["full", "half"] = "full"
    mean_full: float = 0.4
    sd: float = 0.12
    uniform_width: float = 0.24
    radius: tuple[float, float] = (5.0, 11.0)
    patch_probs: tuple[float, ...] = (0.2, 0.6, 0.2)
    isotropic: Literal["per_patch", "per_voxel"] = "per_patch"
    geometry: Literal["centred", "anywhere"] = "centred"
    centre_offset: tuple[float, float] = (4.0, 20.0)
    mix: Literal["weighted", "thirds"] = "weighted"
    insertion: Literal["authors", "replace"] = "authors"

    def __post_init__(self) -> None:
        for name, allowed in (("distribution", DISTRIBUTIONS), ("appearance", APPEARANCES), ("mean", MEANS),
                              ("isotropic", ISOTROPIC_MODES), ("geometry", GEOMETRIES), ("mix", MIX_MODES),
                              ("insertion", INSERTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"JoodConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}.")
        radius = tuple(float(r) for r in self.radius)
        if len(radius) != 2 or not 0 < radius[0] <= radius[1]:
            raise ValueError(f"JoodConfig: radius must be (min, max) with 0 < min <= max voxels, got {self.radius}.")
        if self.geometry == "centred":
            lo, hi = _integers_in(*radius)
            if hi < max(lo, 1):
                raise ValueError(f"JoodConfig: geometry 'centred' draws an integer half-size in radius {radius}, "
                                 "but that range holds no integer >= 1; widen it (e.g. (2.5, 5.5)) or use "
                                 "geometry 'anywhere'.")
        offset = tuple(float(o) for o in self.centre_offset)
        if len(offset) != 2 or not 0 <= offset[0] <= offset[1] or _integers_in(*offset)[1] < _integers_in(*offset)[0]:
            raise ValueError("JoodConfig: centre_offset must be (min, max) voxels with 0 <= min <= max and an "
                             f"integer in between, got {self.centre_offset}.")
        probs = tuple(float(p) for p in self.patch_probs)
        if len(probs) < 1 or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"JoodConfig: patch_probs must be non-negative and sum to 1, got {self.patch_probs}.")
        if self.sd < 0 or self.uniform_width < 0:
            raise ValueError("JoodConfig: sd and uniform_width must be non-negative.")
        object.__setattr__(self, "radius", radius)
        object.__setattr__(self, "centre_offset", offset)
        object.__setattr__(self, "patch_probs", probs)

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> "JoodConfig":
        """Parse ``<distribution>-<appearance>-<mean>`` (e.g. ``mix-mix-half``).

        ``overrides`` set the other fields (e.g. ``radius=(2, 4)``).
        """
        parts = parse_recdisc_variant(variant)
        return cls(distribution=parts[0], appearance=parts[1], mean=parts[2], **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_train_config(cls, variant: str, train: Any) -> "JoodConfig":
        """The configuration a training run uses: the variant plus the profile's ``train`` keys.

        Parameters
        ----------
        variant : str
            ``<distribution>-<appearance>-<mean>``.
        train : TrainConfig
            Read by attribute: ``jood_radius``, ``jood_isotropic``,
            ``jood_geometry``, ``jood_centre_offset``, ``jood_uniform_width``,
            ``jood_mix``, ``jood_insertion``. An attribute that is missing or ``None`` keeps this
            class's default (the authors' code).
        """
        keys = {"radius": "jood_radius", "isotropic": "jood_isotropic", "geometry": "jood_geometry",
                "centre_offset": "jood_centre_offset", "uniform_width": "jood_uniform_width", "mix": "jood_mix",
                "insertion": "jood_insertion"}
        overrides = {field: getattr(train, key) for field, key in keys.items() if getattr(train, key, None) is not None}
        return cls.from_variant(variant, **overrides)

    @property
    def variant(self) -> str:
        """The variant id of this configuration."""
        return f"{self.distribution}-{self.appearance}-{self.mean}"

    @property
    def mean_value(self) -> float:
        """Noise mean in attenuation units."""
        return self.mean_full if self.mean == "full" else self.mean_full / 2.0

    @property
    def max_patches(self) -> int:
        return len(self.patch_probs) - 1


def _values(u: torch.Tensor, is_normal: torch.Tensor, config: JoodConfig) -> torch.Tensor:
    """Turn uniform(0, 1) draws into normal or uniform noise values.

    One draw serves both distributions (normal through the inverse CDF), so
    ``mix`` costs no extra random numbers; fixed distributions compute one branch only.
    """
    eps = 1e-6
    centred = u.clamp(eps, 1.0 - eps).mul_(2.0).sub_(1.0)
    if config.distribution == "uniform":
        return centred.mul_(0.5 * config.uniform_width).add_(config.mean_value)
    normal = torch.erfinv(centred).mul_(config.sd * math.sqrt(2.0)).add_(config.mean_value)
    if config.distribution == "normal":
        return normal
    uniform = centred.mul_(0.5 * config.uniform_width).add_(config.mean_value)
    return torch.where(is_normal, normal, uniform)


def _rotations(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from random 4-vectors (uniform over SO(3) for normal draws)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def _ellipsoids_anywhere(brain: torch.Tensor, n_patches: int, config: JoodConfig,
                         generator: torch.Generator) -> torch.Tensor:
    """Rotated ellipsoids ``(B, P, X, Y, Z)`` centred on uniformly drawn brain voxels (paper)."""
    b, *grid = brain.shape
    dev = brain.device
    n_vox = math.prod(grid)
    flat = brain.reshape(b, 1, n_vox)
    # argmax of iid uniforms restricted to the brain picks a brain voxel uniformly, without a host sync.
    score = torch.rand(b, n_patches, n_vox, generator=generator, device=dev) * flat
    idx = score.argmax(dim=-1)
    yz = grid[1] * grid[2]
    centre = torch.stack([idx // yz, (idx // grid[2]) % grid[1], idx % grid[2]], dim=-1).float()
    lo, hi = config.radius
    radii = lo + (hi - lo) * torch.rand(b, n_patches, 3, generator=generator, device=dev)
    rot = _rotations(torch.randn(b, n_patches, 4, generator=generator, device=dev))
    axes = [torch.arange(s, device=dev, dtype=torch.float32) for s in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, 1, n_vox, 3)
    local = (coords - centre[:, :, None, :]) @ rot  # components along the ellipsoid's axes
    inside = ((local / radii[:, :, None, :]) ** 2).sum(-1) <= 1.0
    return inside.reshape(b, n_patches, *grid)


def _ellipsoids_centred(region: torch.Tensor, n_patches: int, config: JoodConfig, generator: torch.Generator,
                        grid_centre: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned ellipsoids near the grid centre (the authors' code).

    Returns
    -------
    inside : Tensor of bool, shape (B, P, X, Y, Z)
    found : Tensor of bool, shape (B, P)
        False where no allowed centre lies in the offset window; such a
        patch is not drawn.

    Notes
    -----
    The code fixes a sign per axis, then redraws the offsets until the centre
    is allowed: the accepted centre is uniform over the allowed cells of the
    chosen octant of the window. The redraw loop never ends when that octant
    holds no allowed cell; here the centre is then uniform over the allowed
    cells of the whole window, and the patch is dropped when there are none.
    Both are one argmax of random scores (allowed in the chosen octant: 2..3,
    allowed elsewhere: 1..2, not allowed: 0), without a host sync.
    """
    b, *grid = region.shape
    dev = region.device
    # a centre voxel c is allowed when the region holds c and c + (1, 1, 1)
    allowed = torch.zeros_like(region)
    allowed[:, :-1, :-1, :-1] = region[:, :-1, :-1, :-1] & region[:, 1:, 1:, 1:]
    lo, hi = _integers_in(*config.centre_offset)
    offsets = torch.arange(lo, hi + 1, device=dev)
    steps = torch.cat([-offsets.flip(0), offsets])  # window cells along one axis; the second half is '+'
    n_w = steps.numel()
    positive = torch.arange(n_w, device=dev) >= n_w // 2
    cand, valid = [], []
    for g0, n in zip(grid_centre, grid):
        c = steps + int(g0)
        cand.append(c)
        valid.append((c >= 0) & (c < n))
    cl = [c.clamp(0, n - 1) for c, n in zip(cand, grid)]
    window = allowed[:, cl[0]][:, :, cl[1]][:, :, :, cl[2]]  # (B, W, W, W)
    window = window & valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]

    octant = torch.rand(b, n_patches, 3, generator=generator, device=dev) < 0.5  # True: '+' side
    side = [positive.view(1, 1, -1) == octant[:, :, a, None] for a in range(3)]  # each (B, P, W)
    in_octant = side[0][..., :, None, None] & side[1][..., None, :, None] & side[2][..., None, None, :]
    u = torch.rand(b, n_patches, n_w, n_w, n_w, generator=generator, device=dev)
    score = window[:, None] * (u + 1.0 + in_octant)
    best, idx = score.flatten(2).max(dim=-1)
    found = best > 0
    ix, iy, iz = idx // (n_w * n_w), (idx // n_w) % n_w, idx % n_w
    centre = torch.stack([cand[0][ix], cand[1][iy], cand[2][iz]], dim=-1).float() - 0.5  # box of side 2r on c

    r_lo, r_hi = _integers_in(*config.radius)
    r_lo = max(r_lo, 1)
    half = torch.randint(r_lo, r_hi + 1, (b, n_patches), generator=generator, device=dev).float()
    semi = half[..., None] * (0.5 + 0.5 * torch.rand(b, n_patches, 3, generator=generator, device=dev))
    terms = []
    for a, n in enumerate(grid):
        d = (torch.arange(n, device=dev, dtype=torch.float32) - centre[:, :, a, None]) / semi[:, :, a, None]
        shape = [b, n_patches, 1, 1, 1]
        shape[2 + a] = n
        terms.append((d * d).view(shape))
    inside = (terms[0] + terms[1] + terms[2]) <= 1.0
    return inside, found


def add_jood(clean: torch.Tensor, brain: torch.Tensor, config: JoodConfig, generator: torch.Generator, *,
             centre_region: torch.Tensor | None = None,
             grid_centre: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Disturb a batch with JOOD patches.

    Parameters
    ----------
    clean : Tensor, shape (B, C, X, Y, Z)
        Attenuation in [0, 1] (any float dtype).
    brain : Tensor of bool, shape (B, X, Y, Z)
        Brain mask. ``anywhere``: patch centres are drawn uniformly inside
        it. A patch may reach outside it under either geometry, and a volume
        without brain gets no patch.
    config : JoodConfig
    generator : torch.Generator
        On the same device as ``clean``; the only source of randomness.
    centre_region : Tensor of bool, shape (B, X, Y, Z), optional
        ``centred`` only: where a patch's centre voxel ``c`` may lie (the
        region must hold ``c`` and ``c + (1, 1, 1)``). The authors' code uses
        the brain eroded by a 3^3 cube without CSF; ``None`` means ``brain``.
        A patch whose offset window holds no allowed centre is not drawn
        (the authors' code would loop forever); when only the randomly
        chosen octant of the window lacks one, the centre is drawn from the
        whole window.
    grid_centre : (int, int, int), optional
        ``centred`` only: the voxel the offsets are counted from, in the
        coordinates of ``clean`` (for a crop of a larger grid: the full
        grid's centre minus the crop's start). ``None``: ``(X // 2, Y // 2,
        Z // 2)``, i.e. (32, 40, 32) on the authors' 64 x 80 x 64 grid.

    Returns
    -------
    disturbed : Tensor, shape (B, C, X, Y, Z)
        Same dtype and device as ``clean``. ``config.insertion="replace"``:
        inside a patch the noise clipped to [0, 1] replaces the signal, so
        values stay in [0, 1] for input in [0, 1]. ``"authors"``: inside a
        patch a positive noise value replaces the signal and a negative one
        (or zero) is added to it, unclipped, so values may leave [0, 1]
        (below 0 over background, above 1 for draws above 1).
    patch_mask : Tensor of bool, shape (B, X, Y, Z)
        ``"replace"``: exactly the voxels where at least one channel changed;
        a patch voxel whose clipped noise equals the input in every channel
        (e.g. zero noise over zero background) is not marked. ``"authors"``:
        every voxel of every drawn ellipsoid, changed or not (the code's
        ``reconstructive_map``).

    Notes
    -----
    Where patches overlap, the later patch owns the voxel (its value, its
    appearance) under both insertions. Both draw the same random numbers in
    the same order, so the two outputs of one generator state differ only in
    how the values are inserted; nothing synchronises with the host.
    """
    _check_add_jood_inputs(clean, brain, centre_region, grid_centre, generator)
    b, c = clean.shape[:2]
    dev = clean.device
    brain = brain.to(device=dev, dtype=torch.bool)
    n_max = config.max_patches
    if n_max == 0:
        return clean.clone(), torch.zeros_like(brain)
    # The draws come in this order: patch counts, shapes, distributions, appearances, values.
    active = _active_patches(brain, n_max, config, generator)
    patches = _patch_shapes(brain, active, config, generator, centre_region, grid_centre)
    appearances = _draw_appearances(b, n_max, config, generator, dev)
    owners = _Owners.of(patches, appearances)
    value = _noise_values(owners, appearances, c, config, generator)
    return _insert(clean, owners.inside, value, config)


def _check_add_jood_inputs(clean: torch.Tensor, brain: torch.Tensor, centre_region: torch.Tensor | None,
                           grid_centre: tuple[int, int, int] | None, generator: torch.Generator) -> None:
    """Refuse a batch, masks, grid centre or generator that do not fit together."""
    if clean.ndim != 5:
        raise ValueError(f"add_jood: clean must be (B, C, X, Y, Z), got shape {tuple(clean.shape)}.")
    spatial = clean.shape[:1] + clean.shape[2:]
    if brain.shape != spatial:
        raise ValueError(f"add_jood: brain must be (B, X, Y, Z) = {tuple(spatial)}, got {tuple(brain.shape)}.")
    if centre_region is not None and centre_region.shape != spatial:
        raise ValueError(f"add_jood: centre_region must be (B, X, Y, Z) = {tuple(spatial)}, "
                         f"got {tuple(centre_region.shape)}.")
    if grid_centre is not None and len(tuple(grid_centre)) != 3:
        raise ValueError(f"add_jood: grid_centre must be three voxel indices, got {grid_centre!r}.")
    if generator.device.type != clean.device.type:
        raise ValueError(f"add_jood: generator is on {generator.device} but clean is on {clean.device}; "
                         "create the generator with torch.Generator(device=clean.device).")


def _active_patches(brain: torch.Tensor, n_max: int, config: JoodConfig,
                    generator: torch.Generator) -> torch.Tensor:
    """Which of the ``n_max`` patch slots each volume fills, ``(B, P)`` bool; none without brain."""
    b = brain.shape[0]
    dev = brain.device
    u = torch.rand(b, generator=generator, device=dev)
    # thresholds as Python floats: building a device tensor from host data would sync
    count = torch.zeros(b, dtype=torch.long, device=dev)
    for threshold in np.cumsum(config.patch_probs)[:-1]:
        count += u >= float(threshold)
    has_brain = brain.flatten(1).any(-1)
    return (torch.arange(n_max, device=dev)[None, :] < count[:, None]) & has_brain[:, None]


def _patch_shapes(brain: torch.Tensor, active: torch.Tensor, config: JoodConfig, generator: torch.Generator,
                  centre_region: torch.Tensor | None,
                  grid_centre: tuple[int, int, int] | None) -> torch.Tensor:
    """The ellipsoids of the active patch slots, ``(B, P, X, Y, Z)`` bool, drawn as ``config.geometry`` says."""
    n_max = active.shape[1]
    if config.geometry == "anywhere":
        shapes = _ellipsoids_anywhere(brain, n_max, config, generator)
    else:
        region = brain if centre_region is None else centre_region.to(device=brain.device, dtype=torch.bool)
        centre = tuple(int(g) for g in grid_centre) if grid_centre is not None else \
            tuple(n // 2 for n in brain.shape[1:])
        shapes, found = _ellipsoids_centred(region, n_max, config, generator, centre)  # type: ignore[arg-type]
        active = active & found
    return shapes & active[:, :, None, None, None]


@dataclass(frozen=True)
class _Appearances:
    """Each patch's noise: normal or uniform, and its appearance as an index into ``kinds``."""

    is_normal: torch.Tensor  # (B, P) bool
    kind: torch.Tensor  # (B, P) long
    kinds: tuple[str, ...]


def _draw_appearances(b: int, n_max: int, config: JoodConfig, generator: torch.Generator,
                      dev: torch.device) -> _Appearances:
    """Draw each patch's distribution (``mix`` only), then its appearance (``mix`` only)."""
    if config.distribution == "mix":
        is_normal = torch.rand(b, n_max, generator=generator, device=dev) < 0.5
    else:
        is_normal = torch.full((b, n_max), config.distribution == "normal", device=dev)
    if config.appearance == "mix":
        draw = torch.rand(b, n_max, generator=generator, device=dev)
        if config.mix == "thirds":
            kind = (draw * 3).long().clamp_max(2)
        else:
            kind = torch.where(draw > _WEIGHTED_ISOTROPIC_ABOVE, 2, (draw >= _WEIGHTED_RANDOM_BELOW).long())
            if config.distribution == "mix":
                is_normal = is_normal & (kind != 2)  # the code's isotropic Mix patches are uniform
        return _Appearances(is_normal, kind, _BASE_APPEARANCES)
    kind = torch.zeros(b, n_max, dtype=torch.long, device=dev)
    return _Appearances(is_normal, kind, (config.appearance,))


@dataclass(frozen=True)
class _Owners:
    """Which patch owns each voxel (the later patch wins where two overlap), and its parameters per voxel.

    All at (B, X, Y, Z), 1/C of the batch.
    """

    grid: tuple[int, ...]
    inside: torch.Tensor  # (B, X, Y, Z) bool: some patch owns the voxel
    own: torch.Tensor  # (B, X*Y*Z) long: the owning patch (0 outside every patch)
    normal_v: torch.Tensor  # (B, 1, X, Y, Z) bool: the owner's noise is normal
    kind_v: torch.Tensor  # (B, 1, X, Y, Z) long: the owner's appearance

    @classmethod
    def of(cls, patches: torch.Tensor, appearances: _Appearances) -> "_Owners":
        """The owners of the voxels of ``patches`` ``(B, P, X, Y, Z)``."""
        b, n_max, *grid = patches.shape
        owner = torch.full((b, *grid), -1, dtype=torch.long, device=patches.device)
        for p in range(n_max):
            owner = torch.where(patches[:, p], p, owner)
        own = owner.clamp_min(0).reshape(b, -1)
        return cls(grid=tuple(grid), inside=owner >= 0, own=own,
                   normal_v=appearances.is_normal.gather(1, own).view(b, 1, *grid),
                   kind_v=appearances.kind.gather(1, own).view(b, 1, *grid))


def _per_patch_values(channels: int, owners: _Owners, is_normal: torch.Tensor, config: JoodConfig,
                      generator: torch.Generator) -> torch.Tensor:
    """One value per patch and channel, spread over the patch's voxels: ``(B, channels, X, Y, Z)``."""
    b, n_max = is_normal.shape
    own = owners.own
    values = _values(torch.rand(b, channels, n_max, generator=generator, device=own.device),
                     is_normal[:, None, :], config)
    return values.gather(2, own[:, None, :].expand(b, channels, own.shape[1])).view(b, channels, *owners.grid)


def _noise_values(owners: _Owners, appearances: _Appearances, channels: int, config: JoodConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """The noise of every voxel and channel, ``(B, C, X, Y, Z)``: each appearance drawn in turn, the owner's kept."""
    b = owners.own.shape[0]
    dev = owners.own.device
    grid = owners.grid
    value: torch.Tensor | None = None
    for k, name in enumerate(appearances.kinds):
        if name == "random":
            v = _values(torch.rand((b, channels) + grid, generator=generator, device=dev), owners.normal_v, config)
        elif name == "directional":
            v = _per_patch_values(channels, owners, appearances.is_normal, config, generator)
        elif config.isotropic == "per_patch":
            v = _per_patch_values(1, owners, appearances.is_normal, config, generator)
        else:
            v = _values(torch.rand((b, 1) + grid, generator=generator, device=dev), owners.normal_v, config)
        value = v if value is None else torch.where(owners.kind_v == k, v, value)
    assert value is not None
    return value


def _insert(clean: torch.Tensor, inside: torch.Tensor, value: torch.Tensor,
            config: JoodConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the noise into the batch as ``config.insertion`` says: the disturbed batch and its patch mask."""
    if config.insertion == "authors":
        # The code zeroes the signal where the patch is positive, then adds the patch: a positive value
        # replaces the signal, a negative one is added to it; no clipping; the target is the ellipsoid.
        base = clean.float()
        out = torch.where(inside[:, None], torch.where(value > 0, value, base + value), base)
        return out.to(clean.dtype), inside
    out = torch.where(inside[:, None], value.clamp_(0.0, 1.0), clean.float())
    disturbed = out.to(clean.dtype)
    return disturbed, (disturbed != clean).any(dim=1)


def noise_distribution_samples(n: int = 100_000, *, config: JoodConfig | None = None,
                               seed: int = 0) -> dict[str, np.ndarray]:
    """Noise values of the four distribution/mean pairs (the paper's Fig. 3).

    Parameters
    ----------
    n : int
        Samples per distribution.
    config : JoodConfig, optional
        Supplies ``mean_full``, ``sd``, ``uniform_width``, ``isotropic`` and
        ``insertion`` (defaults: the authors' code, uniform width 0.24,
        insertion ``authors``).
    seed : int

    Returns
    -------
    dict
        ``{"normal-full", "normal-half", "uniform-full", "uniform-half"}`` ->
        float32 array of shape (n,), as applied to volumes: clipped to
        [0, 1] under insertion ``replace``, unclipped under ``authors``
        (negative normal draws are kept; the code adds them to the signal).
        Each value is one voxel's value (random, isotropic ``per_voxel``)
        or one patch's value (directional, isotropic ``per_patch``): the
        marginal distribution is the same. :func:`noise_distribution_label`
        describes the configuration in words (the figure's title).
    """
    if n < 1:
        raise ValueError(f"noise_distribution_samples: n must be positive, got {n}.")
    base = config or JoodConfig()
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, np.ndarray] = {}
    for dist in ("normal", "uniform"):
        for mean in MEANS:
            cfg = replace(base, distribution=dist, mean=mean)
            u = torch.rand(n, generator=gen)
            vals = _values(u, torch.tensor(dist == "normal"), cfg)
            if cfg.insertion == "replace":
                vals = vals.clamp(0.0, 1.0)
            out[f"{dist}-{mean}"] = vals.numpy().astype(np.float32)
    return out


def noise_distribution_label(config: JoodConfig | None = None) -> str:
    """One line naming what Fig. 3 shows for ``config`` (default: the authors' code).

    E.g. ``"sd 0.12; uniform: mean +- 0.12 (width 0.24); isotropic: one value per patch"``.
    """
    cfg = config or JoodConfig()
    iso = "one value per patch" if cfg.isotropic == "per_patch" else "one value per voxel"
    return (f"sd {cfg.sd:.2f}; uniform: mean +- {cfg.uniform_width / 2:.2f} (width {cfg.uniform_width:.2f}); "
            f"isotropic: {iso}")
