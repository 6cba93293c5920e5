"""MATLAB `imresize(..., 'bicubic')`, bit-exact on uint8 data, in JAX and in NumPy.

The SR benchmarks' LR files were made with MATLAB; OpenCV/PIL/`jax.image.resize` bicubic
differ from it (other kernel, other border rule or other sampling grid), which costs
~0.05-0.3 dB on the tables. The algorithm (MATLAB's `contributions`):

* Keys cubic kernel, a = -0.5, width 4. When downscaling (scale < 1) with antialiasing
  the kernel is stretched by 1/scale: h(x) = scale * cubic(scale * x), width 4/scale.
* Output pixel x (1-based) samples input coordinate u = x/scale + 0.5 (1 - 1/scale), with
  taps floor(u - width/2) + 0..ceil(width)+1; weights normalised to sum 1 per output pixel;
  tap columns that are zero for every output pixel are dropped.
* Borders: symmetric (edge pixel repeated) index mirroring.
* Separable: the dimension with the smaller scale first (stable, so H before W on ties).
* On uint8 input MATLAB rounds (half away from zero) and saturates to uint8 after every
  pass. That intermediate rounding is needed to reproduce the shipped LR files exactly.

The per-axis weights are computed once per (in_len, out_len, scale) in float64 NumPy and
stored as a dense (out_len, in_len) matrix, so the JAX path is two matmuls with static
shapes: jit-able, vmap-able and usable inside a training step. The matmuls run at
`Precision.HIGHEST`, because GPUs/TPUs would otherwise use TF32/bf16 passes for float32,
which breaks bit-exactness after rounding. `imresize_np` is the float64 NumPy twin for
data preparation; it accumulates tap by tap in MATLAB's order.

Exactness on uint8 data: both paths reproduce every shipped Set5/Set14 x2/x3/x4 LR file.
For x2/x3/x4 (down and up) the weights are dyadic or have small denominators, so float32
is exact enough. For other scales some outputs are exact .5 ties mathematically (scale 1.5:
weights in 1/432 steps); float64 lands on either side of the tie depending on operation
order, and the float32 JAX path may then round ~0.1% of pixels one level differently from
the float64 path. Use `imresize_np` for data preparation at such scales.
"""
import functools
import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Scale = Union[float, Sequence[float]]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True):
    """MATLAB `contributions`: (weights [out, P], 0-based indices [out, P]) in float64."""
    if scale < 1 and antialias:
        kernel = lambda d: scale * cubic(scale * d)
        width = 4.0 / scale
    else:
        kernel, width = cubic, 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    indices = left + np.arange(taps, dtype=np.float64)[None, :]      # 1-based like MATLAB
    weights = kernel(u - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric borders: 1..n, n..1 repeated (MATLAB's `aux` trick).
    aux = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    indices = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


@functools.lru_cache(maxsize=256)
def cached_contributions(in_len: int, out_len: int, scale: float, antialias: bool = True):
    weights, indices = contributions(in_len, out_len, scale, antialias)
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices


@functools.lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True):
    """Dense float64 (out_len, in_len) matrix M with resized = M @ signal (read-only)."""
    weights, indices = cached_contributions(in_len, out_len, scale, antialias)
    m = np.zeros((out_len, in_len), np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], indices.shape)
    np.add.at(m, (rows, indices), weights)     # mirrored taps can hit the same pixel twice
    m.setflags(write=False)
    return m


def _output_size(in_len: int, scale: float) -> int:
    v = in_len * scale
    # ceil as MATLAB does, but don't let 1/3-style float noise add a row (255 * (1/3)).
    return int(round(v)) if abs(v - round(v)) < 1e-9 else int(math.ceil(v))


def plan(in_hw, scale: Optional[Scale] = None, output_shape=None):
    """Static resize plan: ((axis_in_hw, in_len, out_len, scale), ...) in MATLAB's order."""
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize: give exactly one of `scale` or `output_shape`")
    if output_shape is not None:
        out_hw = tuple(int(o) for o in output_shape)
        if len(out_hw) != 2 or min(out_hw) < 1:
            raise ValueError(f"imresize: output_shape must be (H, W) >= 1, got {output_shape}")
        scales = tuple(o / i for o, i in zip(out_hw, in_hw))
    else:
        scales = tuple(float(s) for s in (scale if np.ndim(scale) else (scale, scale)))
        if len(scales) != 2 or min(scales) <= 0:
            raise ValueError(f"imresize: scale must be > 0 (or a pair), got {scale}")
        out_hw = tuple(_output_size(i, s) for i, s in zip(in_hw, scales))
    order = sorted(range(2), key=lambda a: scales[a])      # stable: H first on ties
    return tuple((a, in_hw[a], out_hw[a], scales[a]) for a in order)


def _spatial_axes(ndim: int):
    if ndim == 2:
        return (0, 1)
    if ndim in (3, 4):
        return (ndim - 3, ndim - 2)
    raise ValueError(f"imresize: expected HW, HWC or NHWC, got {ndim} dimensions")


def _round_uint8(v, xp):
    """MATLAB uint8 saturation of 0-255 data: round half away from zero, clip to [0, 255]."""
    return xp.floor(xp.clip(v, 0.0, 255.0) + 0.5)


def imresize(x, scale: Optional[Scale] = None, output_shape=None, *, antialias: bool = True,
             round_intermediate: bool = False, pixel_max: float = 255.0):
    """MATLAB bicubic resize of an HW, HWC or NHWC array (JAX; jit/vmap-able).

    Args:
      x: float array (any float dtype; computed in that dtype) or uint8 array (MATLAB
        uint8 semantics: computed in float32, rounded after each pass, returned as uint8).
      scale: factor (or (sh, sw)); output size ceil(in * scale). Static Python number.
      output_shape: (H, W) instead of `scale`; then scale = out/in per axis.
      antialias: widen the kernel when downscaling (MATLAB default True).
      round_intermediate: emulate MATLAB on uint8 data with float input on a
        [0, pixel_max] scale: the input is quantised to 255 levels (it stands for uint8
        data), every pass is rounded and saturated on the 0-255 scale, and the result is
        returned on the [0, pixel_max] scale again.
      pixel_max: 255 for 0-255 data, 1 for [0, 1] data (only used when rounding).
    """
    is_uint8 = x.dtype == jnp.uint8
    if is_uint8 or not jnp.issubdtype(x.dtype, jnp.floating):
        x = jnp.asarray(x, jnp.float32)
    if is_uint8:
        round_intermediate, pixel_max = True, 255.0
    if round_intermediate:
        # Work on exact integers 0..255: k/255 * 255 is off by an ulp in float32, and the
        # x2 weights are dyadic, so exact .5 ties are common and an ulp flips them.
        x = _round_uint8(x * (255.0 / pixel_max), jnp)
    axes = _spatial_axes(x.ndim)
    for a, n_in, n_out, s in plan(tuple(x.shape[i] for i in axes), scale, output_shape):
        m = jnp.asarray(resize_matrix(n_in, n_out, s, antialias), x.dtype)
        x = jnp.moveaxis(jnp.tensordot(m, x, axes=([1], [axes[a]]),
                                       precision=jax.lax.Precision.HIGHEST), 0, axes[a])
        if round_intermediate:
            x = _round_uint8(x, jnp)
    if is_uint8:
        return x.astype(jnp.uint8)
    return x * (pixel_max / 255.0) if round_intermediate and pixel_max != 255.0 else x


def _resize_axis_sequential(y, weights, indices, axis):
    """sum_k w[:, k] * y[idx[:, k]], accumulated tap by tap in float64 like MATLAB's
    imresizemex: with non-dyadic weights (e.g. scale 1.5) some values are exact .5 ties
    mathematically, and only the same operation order rounds them the same way."""
    y = np.moveaxis(y, axis, 0)
    shape = (-1,) + (1,) * (y.ndim - 1)
    out = np.zeros((weights.shape[0],) + y.shape[1:])
    for k in range(weights.shape[1]):
        out += weights[:, k].reshape(shape) * y[indices[:, k]]
    return np.moveaxis(out, 0, axis)


def imresize_np(x: np.ndarray, scale: Optional[Scale] = None, output_shape=None, *,
                antialias: bool = True, round_intermediate: bool = False,
                pixel_max: float = 255.0) -> np.ndarray:
    """Float64 NumPy twin of `imresize` (same arguments); uint8 in -> uint8 out."""
    x = np.asarray(x)
    is_uint8 = x.dtype == np.uint8
    if is_uint8:
        round_intermediate, pixel_max = True, 255.0
    out_dtype = np.uint8 if is_uint8 else np.result_type(x.dtype, np.float32)
    y = x.astype(np.float64)
    if round_intermediate:
        y = _round_uint8(y * (255.0 / pixel_max), np)
    axes = _spatial_axes(y.ndim)
    for a, n_in, n_out, s in plan(tuple(y.shape[i] for i in axes), scale, output_shape):
        y = _resize_axis_sequential(y, *cached_contributions(n_in, n_out, s, antialias),
                                    axes[a])
        if round_intermediate:
            y = _round_uint8(y, np)
    if round_intermediate and not is_uint8 and pixel_max != 255.0:
        y = y * (pixel_max / 255.0)
    return y.astype(out_dtype)


# For host-side callers with concrete arrays (evaluation, tools): one compiled program per
# (shape, arguments) instead of op-by-op dispatch (~0.2 s vs ~0.5 s for a 512x512 image).
imresize_jit = jax.jit(imresize, static_argnames=(
    "scale", "output_shape", "antialias", "round_intermediate", "pixel_max"))
