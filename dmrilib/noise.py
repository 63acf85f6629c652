"""Just-out-of-distribution (JOOD) disturbances for training RecDiscNet.

Random ellipsoid patches centred inside the brain are filled with noise
drawn from a normal or uniform distribution whose mean is the mean brain
attenuation ("full", 0.4) or half of it ("half", 0.2), with the spread of brain
attenuation (sd 0.12). The noise has one of three appearances:

* ``random``: an independent value per voxel and channel;
* ``directional``: one value per channel (diffusion direction), constant in space;
* ``isotropic``: one value per voxel, the same in every channel.

``mix`` draws the distribution and/or appearance anew for every patch. The
variant id ``<distribution>-<appearance>-<mean>`` (e.g.
``normal-directional-half``, ``mix-mix-full``) names one configuration of the
paper's Table 2. Everything runs in torch on the batch's device and draws only
from the ``torch.Generator`` passed in, without host-device synchronisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from dmrilib.variants import APPEARANCES, DISTRIBUTIONS, MEANS, parse_recdisc_variant

__all__ = ["JoodConfig", "add_jood", "noise_distribution_samples", "DISTRIBUTIONS", "APPEARANCES", "MEANS"]

_BASE_APPEARANCES = ("random", "directional", "isotropic")


@dataclass(frozen=True)
class JoodConfig:
    """One JOOD configuration.

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
        Width (max - min) of the uniform noise; the paper sets the uniform
        range to the brain sd, so it defaults to 0.12.
    radius : (float, float)
        Range of the ellipsoid semi-axes in voxels (paper: 5 to 11); shrink
        it with the grid for small profiles.
    patch_probs : tuple of float
        Probability of 0, 1, 2, ... patches per volume (paper: 0.2, 0.6, 0.2).
    """

    distribution: Literal["normal", "uniform", "mix"] = "normal"
    appearance: Literal["random", "directional", "isotropic", "mix"] = "random"
    mean: Literal["full", "half"] = "full"
    mean_full: float = 0.4
    sd: float = 0.12
    uniform_width: float = 0.12
    radius: tuple[float, float] = (5.0, 11.0)
    patch_probs: tuple[float, ...] = (0.2, 0.6, 0.2)

    def __post_init__(self) -> None:
        for name, allowed in (("distribution", DISTRIBUTIONS), ("appearance", APPEARANCES), ("mean", MEANS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"JoodConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}.")
        radius = tuple(float(r) for r in self.radius)
        if len(radius) != 2 or not 0 < radius[0] <= radius[1]:
            raise ValueError(f"JoodConfig: radius must be (min, max) with 0 < min <= max voxels, got {self.radius}.")
        probs = tuple(float(p) for p in self.patch_probs)
        if len(probs) < 1 or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"JoodConfig: patch_probs must be non-negative and sum to 1, got {self.patch_probs}.")
        if self.sd < 0 or self.uniform_width < 0:
            raise ValueError("JoodConfig: sd and uniform_width must be non-negative.")
        object.__setattr__(self, "radius", radius)
        object.__setattr__(self, "patch_probs", probs)

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> "JoodConfig":
        """Parse ``<distribution>-<appearance>-<mean>`` (e.g. ``mix-mix-half``).

        ``overrides`` set the other fields (e.g. ``radius=(2, 4)``).
        """
        parts = parse_recdisc_variant(variant)
        return cls(distribution=parts[0], appearance=parts[1], mean=parts[2], **overrides)  # type: ignore[arg-type]

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


def _ellipsoids(brain: torch.Tensor, n_patches: int, config: JoodConfig,
                generator: torch.Generator) -> torch.Tensor:
    """Boolean ellipsoids ``(B, P, X, Y, Z)`` centred on random brain voxels."""
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


def add_jood(volumes: torch.Tensor, brain_mask: torch.Tensor, config: JoodConfig,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Disturb a batch with JOOD patches.

    Parameters
    ----------
    volumes : Tensor, shape (B, C, X, Y, Z)
        Attenuation in [0, 1] (any float dtype).
    brain_mask : Tensor of bool, shape (B, X, Y, Z)
        Patch centres are drawn inside it; a patch may reach outside it.
    config : JoodConfig
    generator : torch.Generator
        On the same device as ``volumes``; the only source of randomness.

    Returns
    -------
    disturbed : Tensor, shape (B, C, X, Y, Z)
        Same dtype and device as ``volumes``, values in [0, 1].
    patch_mask : Tensor of bool, shape (B, X, Y, Z)
        Exactly the voxels where at least one channel changed. A patch voxel
        whose noise, after clipping to [0, 1], equals the input in every
        channel (e.g. zero noise over zero background) is not marked: nothing
        there is detectable.
    """
    if volumes.ndim != 5:
        raise ValueError(f"add_jood: volumes must be (B, C, X, Y, Z), got shape {tuple(volumes.shape)}.")
    if brain_mask.shape != volumes.shape[:1] + volumes.shape[2:]:
        raise ValueError(f"add_jood: brain_mask must be (B, X, Y, Z) = {tuple(volumes.shape[:1] + volumes.shape[2:])},"
                         f" got {tuple(brain_mask.shape)}.")
    if generator.device.type != volumes.device.type:
        raise ValueError(f"add_jood: generator is on {generator.device} but volumes are on {volumes.device}; "
                         "create the generator with torch.Generator(device=volumes.device).")
    b, c = volumes.shape[:2]
    dev = volumes.device
    brain = brain_mask.to(device=dev, dtype=torch.bool)
    n_max = config.max_patches
    if n_max == 0:
        return volumes.clone(), torch.zeros_like(brain)

    u = torch.rand(b, generator=generator, device=dev)
    # thresholds as Python floats: building a device tensor from host data would sync
    count = torch.zeros(b, dtype=torch.long, device=dev)
    for threshold in np.cumsum(config.patch_probs)[:-1]:
        count += u >= float(threshold)
    has_brain = brain.flatten(1).any(-1)
    active = (torch.arange(n_max, device=dev)[None, :] < count[:, None]) & has_brain[:, None]
    patches = _ellipsoids(brain, n_max, config, generator) & active[:, :, None, None, None]

    if config.distribution == "mix":
        is_normal = torch.rand(b, n_max, generator=generator, device=dev) < 0.5
    else:
        is_normal = torch.full((b, n_max), config.distribution == "normal", device=dev)
    if config.appearance == "mix":
        kind = (torch.rand(b, n_max, generator=generator, device=dev) * 3).long().clamp_max(2)
        kinds = _BASE_APPEARANCES
    else:
        kind = torch.zeros(b, n_max, dtype=torch.long, device=dev)
        kinds = (config.appearance,)

    # Which patch owns each voxel (the later patch wins where two overlap), and
    # that patch's parameters per voxel: all at (B, X, Y, Z), 1/C of the batch.
    grid = tuple(volumes.shape[2:])
    owner = torch.full((b, *grid), -1, dtype=torch.long, device=dev)
    for p in range(n_max):
        owner = torch.where(patches[:, p], p, owner)
    inside = owner >= 0
    own = owner.clamp_min(0).reshape(b, -1)
    normal_v = is_normal.gather(1, own).view(b, 1, *grid)
    kind_v = kind.gather(1, own).view(b, 1, *grid)

    value: torch.Tensor | None = None
    for k, name in enumerate(kinds):
        if name == "random":
            v = _values(torch.rand((b, c) + grid, generator=generator, device=dev), normal_v, config)
        elif name == "directional":
            per_patch = _values(torch.rand(b, c, n_max, generator=generator, device=dev),
                                is_normal[:, None, :], config)
            v = per_patch.gather(2, own[:, None, :].expand(b, c, own.shape[1])).view(b, c, *grid)
        else:
            v = _values(torch.rand((b, 1) + grid, generator=generator, device=dev), normal_v, config)
        value = v if value is None else torch.where(kind_v == k, v, value)
    assert value is not None
    out = torch.where(inside[:, None], value.clamp_(0.0, 1.0), volumes.float())
    disturbed = out.to(volumes.dtype)
    return disturbed, (disturbed != volumes).any(dim=1)


def noise_distribution_samples(n: int = 100_000, *, config: JoodConfig | None = None,
                               seed: int = 0) -> dict[str, np.ndarray]:
    """Noise values of the four distribution/mean pairs (the paper's Fig. 3).

    Parameters
    ----------
    n : int
        Samples per distribution.
    config : JoodConfig, optional
        Supplies ``mean_full``, ``sd`` and ``uniform_width`` (defaults: paper values).
    seed : int

    Returns
    -------
    dict
        ``{"normal-full", "normal-half", "uniform-full", "uniform-half"}`` ->
        float32 array of shape (n,), clipped to [0, 1] as applied to volumes.
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
            vals = _values(u, torch.tensor(dist == "normal"), cfg).clamp(0.0, 1.0)
            out[f"{dist}-{mean}"] = vals.numpy().astype(np.float32)
    return out
