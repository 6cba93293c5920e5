"""Random motion-blur kernels of KAIR's classical degradation (USRNet training), on device.

KAIR draws half of its training kernels with `utils_deblur.blurkernel_synthesis(h=25)`, a
random camera-shake trajectory (Boracchi & Foi style) binned into an image. The recipe,
step by step (architectures.md section 6; same distributions here, computed in closed
form so that one code path serves JAX (jit/vmap, per-sample) and NumPy):

1. trajectory of T = 250 points in 3-D: rotation angles r_t = r_{t-1} + (2 pi / T) F_t
   with F_t = n_t / (t + 1) + r_{t-1}; velocity v_t = v_{t-1} + m_t / (t + 1) (v_0 and the
   n_t, m_t standard normal); position x_t = x_{t-1} + Rz Ry Rx(r_t) v_t, x_0 = 0;
2. a kernel side h = round(min(5 - ln(U) / 0.15, 27)), made odd (5..27);
3. the first two coordinates binned on h x h cells of width (max - min) / h starting at
   the minimum; as in KAIR, only cells 0..n-2 are counted, n being the length of its
   threshold list `arange(min, max, width)`: h, or h + 1 when rounding makes
   (max - min) / width exceed h (about 5 % per axis), so the last row/column usually
   stays empty;
4. normalised, 'same' convolution with a 3x3 Gaussian (sigma 1, zero border), normalised;
5. centred in a size x size frame (KAIR: 25); a larger h keeps the top-left size x size;
6. with probability 1/4 bilinearly enlarged (OpenCV INTER_LINEAR: half-pixel centres,
   edge clamp) to a random (rows, cols) in [size, 5 size] each and centre-cropped;
7. replaced by a centred Gaussian of sigma 0.1 + 6 U when its mass is below 0.1 (after the
   crop), then normalised.

One deviation: when no trajectory point falls in the counted cells (KAIR then redraws h on
the same trajectory), the kernel falls through to the Gaussian of step 7.
"""
import math

import jax.numpy as jnp

from jaxsr.data import kernels as K

TRAJECTORY_POINTS = 250
MAX_SIDE = 27                   # step 2's cap on h
N_UNIFORMS = 5                  # side, resize coin, resize rows, resize cols, fallback sigma
N_NORMALS = 3 + 6 * (TRAJECTORY_POINTS - 1)


def trajectory(normals, xp=jnp):
    """Step 1: [3 + 6 (T-1)] standard normals -> the first two coordinates [2, T]."""
    t_count = TRAJECTORY_POINTS
    v0 = normals[:3]
    n_rot = normals[3:3 + 3 * (t_count - 1)].reshape(t_count - 1, 3)
    n_vel = normals[3 + 3 * (t_count - 1):].reshape(t_count - 1, 3)
    t = xp.arange(1, t_count, dtype=normals.dtype)[:, None]
    step = 2 * math.pi / t_count
    # r_t = (1 + step) r_{t-1} + step n_t / (t + 1): a linear recurrence, summed in closed
    # form (growth (1 + step)^T ~ 520, harmless in float32).
    growth = (1 + step) ** t
    r = growth * xp.cumsum(step * n_rot / (t + 1) / growth, axis=0)          # [T-1, 3]
    v = v0[None] + xp.cumsum(n_vel / (t + 1), axis=0)                         # [T-1, 3]
    moves = _rotate(v, r, xp)
    x = xp.concatenate([xp.zeros((1, 3), normals.dtype), xp.cumsum(moves, axis=0)], axis=0)
    return x[:, :2].T


def _rotate(v, r, xp):
    """Rz(r2) Ry(r1) Rx(r0) v for rows of v [N, 3] and angles r [N, 3]."""
    c, s = xp.cos(r), xp.sin(r)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    y, z = c[:, 0] * y - s[:, 0] * z, s[:, 0] * y + c[:, 0] * z               # Rx
    x, z = c[:, 1] * x + s[:, 1] * z, -s[:, 1] * x + c[:, 1] * z              # Ry
    x, y = c[:, 2] * x - s[:, 2] * y, s[:, 2] * x + c[:, 2] * y               # Rz
    return xp.stack([x, y, z], axis=1)


def side_from_uniform(u, xp=jnp):
    """Step 2: h in {5, 7, ..., 27} (round half to even, as numpy)."""
    h = xp.round(xp.minimum(5.0 - xp.log(xp.maximum(u, 1e-30)) / 0.15, float(MAX_SIDE)))
    h = h.astype(xp.int32)
    return h + 1 - h % 2


def _bin_counts(xy, h, xp):
    """Step 3: counts [MAX_SIDE, MAX_SIDE] (rows: first coordinate). Per axis the cells
    lie between the thresholds of numpy's `arange(min, max, width)`: n = ceil((max - min)
    / width) values min + i * ((min + width) - min), compared as KAIR compares them, and
    only cells 0..n-2 are counted."""
    lo, hi = xp.min(xy, axis=1, keepdims=True), xp.max(xy, axis=1, keepdims=True)
    width = (hi - lo) / h
    safe = xp.where(width > 0, width, 1.0)
    n_thresholds = xp.ceil((hi - lo) / safe).astype(xp.int32)                # [2, 1]
    i = xp.arange(MAX_SIDE + 1)
    thresholds = lo + i * ((lo + safe) - lo)                                   # [2, 28]
    valid = i < n_thresholds
    passed = (xy[:, :, None] >= thresholds[:, None, :]) & valid[:, None, :]    # [2, T, 28]
    count = xp.sum(passed, axis=2)                                             # [2, T]
    ok = xp.all((count >= 1) & (count <= n_thresholds - 1), axis=0) & xp.all(width > 0)
    cells = xp.arange(MAX_SIDE)
    rows = ((count[0][:, None] - 1 == cells) & ok[:, None]).astype(xy.dtype)  # [T, 27]
    cols = (count[1][:, None] - 1 == cells).astype(xy.dtype)
    return rows.T @ cols


def _normalise(k, xp):
    total = xp.sum(k)
    return k / xp.where(total > 0, total, 1.0)


def _smooth(k, h, xp):
    """Step 4's 3x3 Gaussian (sigma 1) 'same' convolution with a zero border, kept to h x h."""
    g = K.gaussian_kernel_np(3, 1.0, 1.0)
    kp = xp.pad(k, 1)
    out = sum(g[a, b] * kp[a:a + MAX_SIDE, b:b + MAX_SIDE] for a in range(3) for b in range(3))
    inside = xp.arange(MAX_SIDE) < h
    return out * (inside[:, None] & inside[None, :])


def _frame(k, h, size: int, xp):
    """Step 5: the h x h kernel (top-left of k) centred in size x size, or cropped."""
    src = xp.arange(size) - xp.maximum((size - h) // 2, 0)
    src = xp.where((src >= 0) & (src < h), src, MAX_SIDE)                     # -> zero row
    k = xp.pad(k, ((0, 1), (0, 1)))
    return k[src[:, None], src[None, :]]


def _linear_weights(out_len, size: int, xp):
    """[size, size] rows of OpenCV INTER_LINEAR weights for the centre `size` samples of a
    resize from `size` to `out_len` (half-pixel centres, edge clamp)."""
    dst = (out_len - size) // 2 + xp.arange(size)
    src = (dst + 0.5) * (size / out_len) - 0.5
    left = xp.floor(src)
    frac = src - left
    frac = xp.where(left < 0, 0.0, xp.where(left >= size - 1, 0.0, frac))
    left = xp.clip(left, 0, size - 1).astype(xp.int32)
    right = xp.minimum(left + 1, size - 1)
    cols = xp.arange(size)
    return ((cols == left[:, None]) * (1 - frac)[:, None]
            + (cols == right[:, None]) * frac[:, None])


def motion_kernel(normals, u, size: int = 25, xp=jnp):
    """One random motion kernel [size, size] from N_NORMALS standard normals and
    N_UNIFORMS uniforms in [0, 1) (layout: side, resize coin, rows, cols, fallback sigma)."""
    return kernel_from_trajectory(trajectory(normals, xp), u, size, xp)


def kernel_from_trajectory(xy, u, size: int = 25, xp=jnp):
    """Steps 2-7 for a trajectory xy [2, T]. Whether a threshold list gets h + 1 entries
    depends on the last bits of (max - min) / width, so kernels from trajectories that
    differ by rounding can differ in their last row or column."""
    h = side_from_uniform(u[0], xp)
    k = _normalise(_bin_counts(xy, h, xp), xp)
    k = _normalise(_smooth(k, h, xp), xp)
    k = _frame(k, h, size, xp)
    n_sizes = 4 * size + 1                                  # randint(size, 5 size)
    rows = size + xp.minimum(xp.floor(u[2] * n_sizes), n_sizes - 1)
    cols = size + xp.minimum(xp.floor(u[3] * n_sizes), n_sizes - 1)
    big = _linear_weights(rows, size, xp) @ k @ _linear_weights(cols, size, xp).T
    k = xp.where(xp.floor(u[1] * 4) == 1, big, k)
    sigma = 0.1 + 6.0 * u[4]                                # step 7: fspecial('gaussian')
    fallback = (K.gaussian_kernel if xp is jnp else K.gaussian_kernel_np)(size, sigma, sigma)
    k = xp.where(xp.sum(k) < 0.1, fallback, k)
    return _normalise(k, xp)
