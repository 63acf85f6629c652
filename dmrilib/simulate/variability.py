"""Between-subject variability: smooth random fields, deformations, head pose.

Every field here is an analytic function of millimetre coordinates (a sum of
random low-frequency cosines), so it can be evaluated on any grid (diffusion
or structural) and its bounds are known in closed form: the deformation
``x -> x + u(x)`` is a diffeomorphism because the Lipschitz constant of ``u``
is kept below one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmrilib.simulate import _portable as pmath

__all__ = ["SmoothField", "smooth_field", "Deformation", "random_deformation", "HeadPose", "random_head_pose"]


@dataclass(frozen=True)
class SmoothField:
    """``f(x) = sum_k a_k cos(w_k . x + phi_k)``; ``a`` has shape (K, C) for C outputs."""

    freqs: np.ndarray  # (K, 3) rad/mm
    phases: np.ndarray  # (K,)
    amps: np.ndarray  # (K, C)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Evaluate at points (..., 3) mm; returns (..., C) float32."""
        out = self.wave_sum(points, pmath.cos, self.amps)
        return out.reshape(points.shape[:-1] + (self.amps.shape[1],))

    def wave_sum(self, points: np.ndarray, fn, weights: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        """``sum_k (fn(w_k . x + phi_k) [* scale_k]) * weights[k]`` at points (..., 3); (N, M) float32.

        Float32 throughout, one wave at a time in order k = 0..K-1, so the
        bits do not depend on the CPU (see :mod:`dmrilib.simulate._portable`)
        and the point arrays stay contiguous (a (N, K) table of phases read
        column by column was most of the simulator's time).
        """
        coords = points.reshape(-1, 3).astype(np.float32).T.copy()
        freqs = self.freqs.astype(np.float32)
        phases = self.phases.astype(np.float32)
        weights = np.asarray(weights, dtype=np.float32)
        scale = None if scale is None else np.asarray(scale, dtype=np.float32)
        out = np.empty((weights.shape[1], coords.shape[1]), dtype=np.float32)
        for k in range(freqs.shape[0]):
            arg = coords[0] * freqs[k, 0]
            arg += coords[1] * freqs[k, 1]
            arg += coords[2] * freqs[k, 2]
            arg += phases[k]
            wave = fn(arg)
            if scale is not None:
                wave *= scale[k]
            for m in range(weights.shape[1]):
                if k == 0:
                    np.multiply(wave, weights[k, m], out=out[m])
                else:
                    out[m] += wave * weights[k, m]
        return out.T

    @property
    def lipschitz(self) -> float:
        """Upper bound of the spectral norm of the field's Jacobian."""
        return float((np.linalg.norm(self.amps, axis=1) * np.linalg.norm(self.freqs, axis=1)).sum())


def smooth_field(
    rng: np.random.Generator, *, n_waves: int = 16, wavelength: float = 80.0, channels: int = 1, std: float = 1.0
) -> SmoothField:
    """A random smooth field with per-point standard deviation about ``std``.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_waves : int
        Number of random cosines.
    wavelength : float
        Typical wavelength in mm (frequencies are drawn around ``2 pi / wavelength``).
    channels : int
        Number of output components.
    std : float
        Target standard deviation of each component.
    """
    directions = rng.standard_normal((n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = 2 * np.pi / wavelength * rng.uniform(0.6, 1.4, size=(n_waves, 1))
    phases = rng.uniform(0, 2 * np.pi, size=n_waves)
    amps = rng.standard_normal((n_waves, channels)) * std * np.sqrt(2.0 / n_waves)
    return SmoothField(freqs=directions * k, phases=phases, amps=amps)


@dataclass(frozen=True)
class Deformation:
    """Smooth diffeomorphic displacement ``x -> x + u(x)`` from subject to template mm."""

    field: SmoothField

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return points + self.field(points)

    def inverse(self, points: np.ndarray, n_iter: int = 8) -> np.ndarray:
        """Fixed-point inverse; converges because ``u`` is a contraction."""
        y = points.astype(np.float32)
        x = y.copy()
        for _ in range(n_iter):
            x = y - self.field(x)
        return x


def random_deformation(rng: np.random.Generator, *, amplitude: float = 3.0, wavelength: float = 90.0,
                       max_lipschitz: float = 0.35) -> Deformation:
    """Random smooth deformation with ~``amplitude`` mm displacement, bounded Jacobian.

    The Lipschitz bound ``max_lipschitz < 1`` guarantees the map is invertible
    (a diffeomorphism) with Jacobian determinant in ``[(1-L)^3, (1+L)^3]``.
    """
    if not 0 < max_lipschitz < 1:
        raise ValueError(f"max_lipschitz must be in (0, 1), got {max_lipschitz}")
    field = smooth_field(rng, n_waves=24, wavelength=wavelength, channels=3, std=amplitude)
    lip = field.lipschitz
    if lip > max_lipschitz:
        field = SmoothField(field.freqs, field.phases, field.amps * (max_lipschitz / lip))
    return Deformation(field)


@dataclass(frozen=True)
class HeadPose:
    """Rigid head position: scanner mm = ``rotation @ (head mm - centre) + centre + translation``."""

    rotation: np.ndarray
    translation: np.ndarray
    centre: np.ndarray

    def to_head(self, points: np.ndarray) -> np.ndarray:
        """Scanner mm -> head (subject anatomy) mm."""
        p = points - (self.centre + self.translation).astype(np.float32)
        return pmath.matmul(p, self.rotation.astype(np.float32)) + self.centre.astype(np.float32)

    def to_scanner(self, points: np.ndarray) -> np.ndarray:
        """Head mm -> scanner mm."""
        p = points - self.centre.astype(np.float32)
        return pmath.matmul(p, self.rotation.T.astype(np.float32)) + (self.centre + self.translation).astype(np.float32)


def random_head_pose(rng: np.random.Generator, *, max_rotation_deg: float = 3.0,
                     max_translation_mm: float = 3.0) -> HeadPose:
    """Small random head rotation and translation about the brain centre."""
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, size=3))
    translation = rng.uniform(-max_translation_mm, max_translation_mm, size=3)
    return HeadPose(pmath.rotation_xyz(angles), translation, np.array([0.0, -17.0, 15.0]))
