"""PyTorch's non-antialiased bicubic resize, for NLCUnet's bicubic skip.

`F.interpolate(x, size, mode='bicubic', align_corners=False)` (and torchvision's
`Resize(..., BICUBIC)` on tensors before torchvision 0.17, which is what NLCUnet was
trained with) samples output pixel `i` at `src = (i + 0.5) * in / out - 0.5` (not clamped
at 0, unlike the bilinear path), takes the 4 taps `floor(src) - 1 .. floor(src) + 2`,
clamps their indices into the image (edge replication) and weights them with the Keys
cubic kernel, a = -0.75. This is *not* MATLAB's imresize (a = -0.5, symmetric borders,
antialiasing; see `jaxsr.ops.imresize`) nor `jax.image.resize('cubic')` (a = -0.5, out-of-
range taps dropped and the rest renormalised, which is what torchvision >= 0.17's
antialiased path does when upsampling).

`border='renormalize'` gives that second behaviour, so `a=-0.5, border='renormalize'`
reproduces `antialias=True` upsampling and `jax.image.resize('cubic')`.

The resize is separable; each axis is a dense [out, in] weight matrix built with NumPy
from the static shapes, applied with an einsum (jit-friendly, exact float32 weights).
"""
import numpy as np
import jax
import jax.numpy as jnp

TORCH_A = -0.75     # PyTorch / OpenCV bicubic
KEYS_A = -0.5       # MATLAB / PIL / torchvision antialias bicubic


def cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys weights for the 4 taps at offsets -1, 0, 1, 2 of a fractional position t in [0, 1)."""
    def near(x):   # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):    # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def resize_matrix(in_size: int, out_size: int, a: float = TORCH_A,
                  border: str = "clamp", scale: float | None = None) -> np.ndarray:
    """[out_size, in_size] float64 matrix M such that `M @ signal` is the 1-D resize.

    `scale` is the torch `scale_factor` (output/input); by default the sizes define it,
    as with `F.interpolate(size=...)`.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    if border not in ("clamp", "renormalize"):
        raise ValueError(f"border must be 'clamp' or 'renormalize', got {border!r}")
    ratio = 1.0 / scale if scale else in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * ratio - 0.5
    base = np.floor(src)
    w = cubic_weights(src - base, a)                           # [out, 4]
    idx = base[:, None].astype(np.int64) + np.arange(-1, 3)    # [out, 4]
    if border == "renormalize":
        inside = (idx >= 0) & (idx < in_size)
        w = np.where(inside, w, 0.0)
        w = w / w.sum(axis=1, keepdims=True)
    idx = np.clip(idx, 0, in_size - 1)
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.repeat(np.arange(out_size), 4), idx.ravel()), w.ravel())
    return m


def resize(x: jnp.ndarray, out_hw: tuple[int, int], a: float = TORCH_A,
           border: str = "clamp") -> jnp.ndarray:
    """Bicubic resize of NHWC (or HWC) `x` to spatial size `out_hw`, no antialiasing.

    Same values as `F.interpolate(x_nchw, size=out_hw, mode='bicubic',
    align_corners=False)` for the defaults (a = -0.75, clamp). No clamping of the result.
    """
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC or HWC array, got shape {x.shape}")
    h, w = x.shape[1:3]
    mh = jnp.asarray(resize_matrix(h, out_hw[0], a, border), jnp.float32)
    mw = jnp.asarray(resize_matrix(w, out_hw[1], a, border), jnp.float32)
    hi = jax.lax.Precision.HIGHEST    # no bf16/TF32 passes on accelerators
    y = jnp.einsum("oh,nhwc->nowc", mh, x.astype(jnp.float32), precision=hi)
    y = jnp.einsum("pw,nowc->nopc", mw, y, precision=hi)
    return y[0] if squeeze else y


def upscale(x: jnp.ndarray, scale: int, a: float = TORCH_A,
            border: str = "clamp") -> jnp.ndarray:
    """Integer-factor upscale (NLCUnet's skip: `Resize((s*H, s*W), BICUBIC)`)."""
    h, w = x.shape[-3:-1]
    return resize(x, (h * scale, w * scale), a, border)
