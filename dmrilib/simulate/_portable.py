"""Arithmetic whose result bits are the same on every CPU.

numpy chooses the implementation of ``exp``, ``sin``, ``cos``, ``cbrt``,
``power``... when it is imported (baseline SSE, AVX2 or AVX-512 loops), and the
choices differ in the last bits; OpenBLAS and LAPACK (``@``, ``np.linalg``)
choose their kernels by CPU too. The simulator writes files whose sha256 sums
are shipped in ``data_manifest/``, so the functions here are computed only
from operations that IEEE 754 rounds the same way everywhere: ``+ - * /``,
``sqrt``, ``rint`` and exact scaling by powers of two (``ldexp``, ``frexp``).
Each numpy ufunc call is one such operation (numpy never fuses a multiply and
an add), so a sequence of them gives the same bits on any machine.

The functions are accurate to a few units in the last place of float64 (the
tests compare them with :mod:`math`); float32 input is computed in float64
and rounded once at the end. They are 8-20x slower than numpy's SIMD loops
(35-40 ns per value), which makes the quick cohort take 49 s instead of 33 s
on two cores (``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["exp", "sin", "cos", "cbrt", "matmul", "affine_apply", "det3", "inv3", "solve3",
           "inv_affine", "eigh3", "rotation_xyz", "BASELINE_CPU_ENV"]

# Work in blocks that stay in the CPU cache: the polynomials make ~30 passes.
_BLOCK = 1 << 15

# Cody-Waite splits (fdlibm): the high parts have trailing zero bits, so
# k * HI is exact for the |k| that occur below.
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_EXP_MAX = 709.782712893384
_EXP_MIN = -745.1332191019412
# exp(r) on |r| <= ln2/2: Taylor series to degree 13 (truncation < 1e-17).
_EXP_COEF = tuple(1.0 / float(np.prod(np.arange(1, n + 1, dtype=float))) for n in range(13, -1, -1))

_TWO_OVER_PI = 6.36619772367581382433e-01
_PIO2_1 = 1.57079632673412561417e+00   # first 33 bits of pi/2
_PIO2_2 = 6.07710050630396597660e-11   # next 33 bits
_PIO2_3 = 2.02226624879595063154e-21   # the rest
_TRIG_MAX = 2.0 ** 19 * np.pi / 2      # k * _PIO2_1 stays exact below this
# sin(r) = r * S(r^2), cos(r) = C(r^2) on |r| <= pi/4, Taylor to r^19 / r^18.
_SIN_COEF = tuple((-1.0) ** n / float(np.prod(np.arange(1, 2 * n + 2, dtype=float))) for n in range(9, -1, -1))
_COS_COEF = tuple((-1.0) ** n / float(np.prod(np.arange(1, 2 * n + 1, dtype=float))) for n in range(9, -1, -1))


def _horner(coef: tuple[float, ...], z: np.ndarray) -> np.ndarray:
    p = z * coef[0]
    p += coef[1]
    for c in coef[2:]:
        p *= z
        p += c
    return p


def _blockwise(func, x) -> np.ndarray:
    """Apply a float64 kernel to ``x`` block by block; keep float32 as float32."""
    x = np.asarray(x)
    out_dtype = np.float32 if x.dtype == np.float32 else np.float64
    flat = x.reshape(-1)
    out = np.empty(flat.shape, dtype=out_dtype)
    for start in range(0, flat.size, _BLOCK):
        block = flat[start:start + _BLOCK].astype(np.float64)
        out[start:start + _BLOCK] = func(block)
    out = out.reshape(x.shape)
    return out if x.ndim else out_dtype(out[()])


def _exp64(x: np.ndarray) -> np.ndarray:
    nan = np.isnan(x)
    x = np.clip(np.where(nan, 0.0, x), _EXP_MIN - 1.0, _EXP_MAX + 1.0)
    k = np.rint(x * _LOG2E)
    r = x - k * _LN2_HI
    r -= k * _LN2_LO
    p = _horner(_EXP_COEF, r)
    # ldexp is exact (one correct rounding for subnormal results) on every CPU.
    with np.errstate(over="ignore"):  # set to inf just below
        out = np.ldexp(p, k.astype(np.int32))
    out[x > _EXP_MAX] = np.inf
    out[x < _EXP_MIN] = 0.0
    out[nan] = np.nan
    return out


def _reduce_half_pi(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x = k pi/2 + r`` with ``|r| <= pi/4``; returns ``r`` and the quadrant ``k mod 4``."""
    k = np.rint(x * _TWO_OVER_PI)
    if k.size and not np.abs(k).max() < _TRIG_MAX / (np.pi / 2):  # also refuses NaN
        raise ValueError(f"sin/cos argument NaN or beyond {_TRIG_MAX:.3g} rad: the range reduction would lose "
                         "accuracy.")
    r = x - k * _PIO2_1
    r -= k * _PIO2_2
    r -= k * _PIO2_3
    return r, k.astype(np.int64) & 3


def _sin_cos_r(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = r * r
    return r * _horner(_SIN_COEF, z), _horner(_COS_COEF, z)


def _quadrant(q: np.ndarray, first: np.ndarray, second: np.ndarray, negate: np.ndarray) -> np.ndarray:
    # Both polynomials for every element: picking the elements that need
    # each one (boolean gather and scatter) was slower.
    out = np.where(q & 1, second, first)
    np.negative(out, out=out, where=negate)
    return out


def _sin64(x: np.ndarray) -> np.ndarray:
    # quadrant 0: sin r, 1: cos r, 2: -sin r, 3: -cos r
    r, q = _reduce_half_pi(x)
    s, c = _sin_cos_r(r)
    return _quadrant(q, s, c, q >= 2)


def _cos64(x: np.ndarray) -> np.ndarray:
    # quadrant 0: cos r, 1: -sin r, 2: -cos r, 3: sin r
    r, q = _reduce_half_pi(x)
    s, c = _sin_cos_r(r)
    return _quadrant(q, c, s, (q == 1) | (q == 2))


def _cbrt64(x: np.ndarray) -> np.ndarray:
    # x = m 2^(3j + i) with m in [0.5, 1), i in {0, 1, 2}: cbrt(x) = cbrt(m 2^i) 2^j,
    # and Newton's iteration for cbrt(a), a in [0.5, 4), converges from 1.
    m, e = np.frexp(np.abs(x))
    j = np.floor_divide(e, 3)
    a = np.ldexp(m, e - 3 * j)
    y = np.ones_like(a)
    for _ in range(7):
        y = (2.0 * y + a / (y * y)) / 3.0
    out = np.ldexp(y, j) * np.sign(x)
    out[x == 0] = 0.0
    out[~np.isfinite(x)] = x[~np.isfinite(x)]
    return out


def exp(x) -> np.ndarray:
    """``e**x``, bit-identical on every CPU (float32 stays float32)."""
    return _blockwise(_exp64, x)


def sin(x) -> np.ndarray:
    """``sin(x)`` for ``|x| < 8e5`` rad, bit-identical on every CPU."""
    return _blockwise(_sin64, x)


def cos(x) -> np.ndarray:
    """``cos(x)`` for ``|x| < 8e5`` rad, bit-identical on every CPU."""
    return _blockwise(_cos64, x)


def cbrt(x) -> np.ndarray:
    """Real cube root, bit-identical on every CPU."""
    return _blockwise(_cbrt64, x)


def matmul(a, b) -> np.ndarray:
    """``a @ b`` for ``a`` (..., K) and ``b`` (K, M), summed in order k = 0..K-1.

    For the small K of the simulator (3 coordinates, a few dozen waves) a loop
    of elementwise products and sums is as fast as BLAS and, unlike BLAS,
    does not change its summation order or use fused multiply-adds on
    another CPU.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if b.ndim == 1:
        return matmul(a, b[:, None])[..., 0]
    if a.shape[-1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align.")
    out = a[..., 0, None] * b[0]
    for k in range(1, b.shape[0]):
        out += a[..., k, None] * b[k]
    return out


def affine_apply(points, matrix, offset) -> np.ndarray:
    """``points @ matrix.T + offset`` for points (..., 3), in the points' dtype."""
    points = np.asarray(points)
    dtype = points.dtype if points.dtype == np.float32 else np.float64
    out = matmul(points.astype(dtype, copy=False), np.asarray(matrix, dtype=dtype).T)
    out += np.asarray(offset, dtype=dtype)
    return out


def det3(m) -> np.ndarray:
    """Determinants of 3x3 matrices (..., 3, 3), by cofactor expansion."""
    m = np.asarray(m)
    return (m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
            - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
            + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]))


def inv3(m) -> np.ndarray:
    """Inverses of 3x3 matrices (..., 3, 3) as adjugate / determinant."""
    m = np.asarray(m)
    adj = np.empty_like(m)
    for i in range(3):
        for j in range(3):
            r0, r1 = [r for r in range(3) if r != j]
            c0, c1 = [c for c in range(3) if c != i]
            sign = 1.0 if (i + j) % 2 == 0 else -1.0
            adj[..., i, j] = sign * (m[..., r0, c0] * m[..., r1, c1] - m[..., r0, c1] * m[..., r1, c0])
    return adj / det3(m)[..., None, None]


def solve3(m, rhs) -> np.ndarray:
    """Solve ``m x = rhs`` for 3x3 ``m`` (..., 3, 3) and ``rhs`` (..., 3, R)."""
    inv = inv3(m)
    rhs = np.asarray(rhs)
    out = inv[..., :, 0, None] * rhs[..., 0, None, :]
    for k in (1, 2):
        out = out + inv[..., :, k, None] * rhs[..., k, None, :]
    return out


def inv_affine(affine) -> np.ndarray:
    """Inverse of a 4x4 affine (last row 0, 0, 0, 1)."""
    affine = np.asarray(affine, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = inv3(affine[:3, :3])
    out[:3, 3] = -matmul(out[:3, :3], affine[:3, 3])
    return out


def eigh3(m, sweeps: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and unit eigenvectors (columns) of symmetric 3x3 matrices.

    Cyclic Jacobi rotations, a fixed number of sweeps (3x3 matrices converge
    to full precision in about five). Each eigenvector's largest component is
    made positive, so the sign is defined too.
    """
    a = np.array(m, dtype=np.float64)
    v = np.broadcast_to(np.eye(3), a.shape).copy()
    for _ in range(sweeps):
        for p, q in ((0, 1), (0, 2), (1, 2)):
            apq = a[..., p, q]
            off = apq != 0
            with np.errstate(over="ignore"):  # an infinite theta is a zero rotation, as intended
                theta = np.where(off, (a[..., q, q] - a[..., p, p]) / np.where(off, 2.0 * apq, 1.0), 0.0)
            big = np.abs(theta) > 1e150
            safe = np.where(big, 0.0, theta)
            t = np.where(safe >= 0, 1.0, -1.0) / (np.abs(safe) + np.sqrt(safe * safe + 1.0))
            t = np.where(big, 0.5 / np.where(big, theta, 1.0), t)
            t = np.where(off, t, 0.0)
            c = 1.0 / np.sqrt(t * t + 1.0)
            s = t * c
            for arr in (a, v):  # columns: X P
                col_p = arr[..., :, p].copy()
                col_q = arr[..., :, q]
                arr[..., :, p] = c[..., None] * col_p - s[..., None] * col_q
                arr[..., :, q] = s[..., None] * col_p + c[..., None] * col_q
            row_p = a[..., p, :].copy()  # rows: P^T (A P)
            row_q = a[..., q, :]
            a[..., p, :] = c[..., None] * row_p - s[..., None] * row_q
            a[..., q, :] = s[..., None] * row_p + c[..., None] * row_q
    values = np.stack([a[..., i, i] for i in range(3)], axis=-1)
    order = np.argsort(values, axis=-1, kind="stable")
    values = np.take_along_axis(values, order, axis=-1)
    vectors = np.take_along_axis(v, order[..., None, :], axis=-1)
    largest = np.take_along_axis(vectors, np.abs(vectors).argmax(axis=-2)[..., None, :], axis=-2)
    vectors = vectors * np.where(largest < 0, -1.0, 1.0)
    return values, vectors


def rotation_xyz(angles) -> np.ndarray:
    """Rotation matrix ``Rz @ Ry @ Rx`` for angles (radians) about x, y, z."""
    ax, ay, az = (float(a) for a in angles)
    (sx, sy, sz), (cx, cy, cz) = sin(np.array([ax, ay, az])), cos(np.array([ax, ay, az]))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return matmul(matmul(rz, ry), rx)


#: Environment for a child process that makes numpy, OpenBLAS and glibc's libm
#: take their oldest x86-64 code paths (SSE3 loops, Sandybridge kernels, no
#: FMA): set it to see what a CPU without AVX2 or AVX-512 computes. The tests
#: simulate the smoke and quick cohorts under it and natively, and both must
#: match the shipped manifests.
BASELINE_CPU_ENV = {
    "NPY_DISABLE_CPU_FEATURES": ("AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR "
                                 "AVX2 FMA3 F16C AVX SSE41 SSE42 POPCNT SSSE3"),
    "OPENBLAS_CORETYPE": "Sandybridge",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2_Usable,-FMA_Usable,-AVX_Usable",
}
