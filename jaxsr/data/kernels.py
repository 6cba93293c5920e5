"""Gaussian blur kernels for blind-SR degradations, in JAX (jit/vmap-able) and NumPy.

Conventions follow DAN/DCLS/NLCUnet's `SRMDPreprocessing` (architectures.md section 5) and
KAIR's `gen_kernel` (section 6):

* An l x l kernel (l odd) lives on the integer grid ax = -(l//2) .. l//2; `x` varies along
  columns (the W axis), `y` along rows (the H axis).
* Anisotropic: Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T with
  R = [[cos, -sin], [sin, cos]]; k(x, y) = exp(-0.5 (z - mu)^T Sigma^-1 (z - mu)), z = (x, y).
  Isotropic is sigma_x = sigma_y (theta irrelevant).
* DAN's `random_disturb`: every tap times (1 + U(0, d)) before normalising (d = 0.25).
* KAIR shifts the mean by mu = -0.5 (sf - 1) in x and y so that blur + upper-left
  decimation stays aligned with the HR grid.
* Kernels are normalised to sum 1.

The JAX functions take scalars (or 0-d arrays) and return one kernel; `jax.vmap` them for a
batch of per-sample kernels. The NumPy twins compute in float64 for data preparation.
"""
import math

import jax.numpy as jnp
import numpy as np


def check_size(size: int, what: str = "kernel_size") -> int:
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"{what}={size}: blur kernels must have an odd size >= 1")
    return size


def _grid(size: int, xp):
    half = size // 2
    ax = xp.arange(-half, half + 1, dtype=xp.float32 if xp is jnp else np.float64)
    xx, yy = xp.meshgrid(ax, ax)          # xx varies along columns, yy along rows
    return xx, yy


def _inv_cov(sigma_x, sigma_y, theta, xp):
    """Entries (a, b, c) of Sigma^-1 = [[a, b], [b, c]] for R diag(sx^2, sy^2) R^T."""
    cos, sin = xp.cos(theta), xp.sin(theta)
    ix, iy = 1.0 / (sigma_x * sigma_x), 1.0 / (sigma_y * sigma_y)
    a = cos * cos * ix + sin * sin * iy
    b = cos * sin * (ix - iy)
    c = sin * sin * ix + cos * cos * iy
    return a, b, c


def _gaussian(size, sigma_x, sigma_y, theta, mu_x, mu_y, disturb, xp):
    xx, yy = _grid(check_size(size), xp)
    a, b, c = _inv_cov(sigma_x, sigma_y, theta, xp)
    dx, dy = xx - mu_x, yy - mu_y
    k = xp.exp(-0.5 * (a * dx * dx + 2.0 * b * dx * dy + c * dy * dy))
    if disturb is not None:
        k = k * (1.0 + disturb)
    return k / k.sum()


def gaussian_kernel(size: int, sigma_x, sigma_y, theta=0.0, mu=(0.0, 0.0), disturb=None):
    """JAX: one normalised (an)isotropic Gaussian kernel [size, size] (float32).

    Args:
      size: odd kernel side (static).
      sigma_x, sigma_y: standard deviations along the rotated axes (pixels).
      theta: rotation angle (radians).
      mu: (mu_x, mu_y) mean offset from the centre tap (pixels).
      disturb: optional [size, size] multiplicative noise; the kernel is k * (1 + disturb).
    """
    f = lambda v: jnp.asarray(v, jnp.float32)
    return _gaussian(size, f(sigma_x), f(sigma_y), f(theta), f(mu[0]), f(mu[1]),
                     None if disturb is None else f(disturb), jnp)


def gaussian_kernel_np(size: int, sigma_x, sigma_y, theta=0.0, mu=(0.0, 0.0), disturb=None):
    """NumPy float64 twin of `gaussian_kernel`."""
    f = lambda v: np.float64(v)
    return _gaussian(size, f(sigma_x), f(sigma_y), f(theta), f(mu[0]), f(mu[1]),
                     None if disturb is None else np.asarray(disturb, np.float64), np)


def isotropic_gaussian(size: int, sigma):
    """JAX isotropic kernel (DAN rate_iso=1 / MATLAB fspecial('gaussian') on odd sizes)."""
    return gaussian_kernel(size, sigma, sigma, 0.0)


def anisotropic_gaussian(size: int, sigma_x, sigma_y, theta, disturb=None):
    """JAX anisotropic kernel, centred."""
    return gaussian_kernel(size, sigma_x, sigma_y, theta, disturb=disturb)


def dihedral(k, d):
    """JAX: the d-th (0..7, traced) of the 8 flips/rotations of a square kernel.

    bit 0: flip rows, bit 1: flip columns, bit 2: transpose (applied first).
    """
    d = jnp.asarray(d, jnp.int32)
    k = jnp.where((d & 4) > 0, k.T, k)
    k = jnp.where((d & 1) > 0, k[::-1, :], k)
    return jnp.where((d & 2) > 0, k[:, ::-1], k)


def dihedral_np(k: np.ndarray, d: int) -> np.ndarray:
    """NumPy twin of `dihedral`."""
    d = int(d)
    k = k.T if d & 4 else k
    k = k[::-1, :] if d & 1 else k
    return np.ascontiguousarray(k[:, ::-1] if d & 2 else k)


def moments(k):
    """(mean_x, mean_y, cov [[xx, xy], [xy, yy]]) of a kernel on its centred grid (NumPy)."""
    k = np.asarray(k, np.float64)
    xx, yy = _grid(k.shape[0], np)
    mx, my = float((k * xx).sum()), float((k * yy).sum())
    dx, dy = xx - mx, yy - my
    cov = np.array([[(k * dx * dx).sum(), (k * dx * dy).sum()],
                    [(k * dx * dy).sum(), (k * dy * dy).sum()]])
    return mx, my, cov


def analytic_cov(sigma_x, sigma_y, theta) -> np.ndarray:
    """R diag(sx^2, sy^2) R^T, the covariance a kernel should have (for checks)."""
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return r @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ r.T
