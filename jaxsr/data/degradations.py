"""LR synthesis from HR: blur -> downscale -> noise -> 8-bit quantisation, on device.

`synthesize_lr(hr, rng, config)` is what the training step calls: `hr` float32
[B, H, W, 3] in [0, 1], H and W multiples of `config.scale`; it returns float32 LR
[B, H/s, W/s, 3] on the same [0, 1] scale. Every sample draws its own kernel width,
angle and noise level from `rng`; everything is jit- and vmap-able with static shapes.
`synthesize_lr_np` is the NumPy/SciPy twin for data preparation (blind test sets);
`apply_degradation` / `apply_degradation_np` take explicit parameters so that the two
paths can be compared on identical kernels and noise.

The pipeline is described by `config.degradation`: `name` picks a preset (PRESETS below;
`configs/degradations.py` documents them) and every other field, when not None, overrides
that preset's value (`--config.degradation.sigma_max=3.0`). Internally pixel values are
on the 0-255 scale, because the reference recipes round and floor on that scale:

* bicubic (BI): MATLAB imresize of the uint8 HR with MATLAB's uint8 rounding after each
  pass; this reproduces the EDSR/DIV2K/benchmark `LR_bicubic` files bit-exactly (the
  official LR were made from uint8 HR, so rounding only at the end differs from them on
  7-15% of pixels, mostly by 1-2 levels: docs/degradations.md). Set `bicubic_round=False` for float bicubic + a final
  round(clip(.)).
* bd: RDN/RCAN `imresize_BD`: 7x7 Gaussian, sigma 1.6, replicate padding, imfilter on
  uint8 (rounded), then MATLAB bicubic on uint8.
* dn<level> (dn10, dn15, dn20, dn25, ...): MATLAB bicubic to uint8, + level * N(0, 1),
  rounded and clipped to uint8.
* nlcunet_iso / nlcunet_aniso: NLCUnet configurations 1 and 2 (= DAN/DCLS
  `SRMDPreprocessing`): reflect-padded cross-correlation, float MATLAB bicubic, then
  round(LR * 255) / 255 without clamping.
* kenet: KENet training kernels (anisotropic, sigma in [0.2, 4], theta in [0, pi], 11x11
  at x2, 21x21 at x4). The paper does not say how it downsamples; we use USRNet's model
  (KENet's kernels feed USRNet): circular true convolution and upper-left decimation.
* kair: KAIR/USRNet classical model: wrap-mode true convolution of the uint8 HR, floored
  to uint8, upper-left s-fold decimation, then float AWGN with level 0 (p=1/9) or
  randint(0, 25); no final quantisation. Half of the kernels are KAIR's random
  motion-blur kernels (`jaxsr.data.motion_kernels`), half anisotropic Gaussians, shifted
  and flipped/rotated at random as KAIR does (the motion kernels are neither); the scale
  is fixed (KAIR draws it per batch).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import target_platform
from jaxsr.data import kernels as K
from jaxsr.data import motion_kernels
from jaxsr.data.degradation_spec import (  # noqa: F401 (part of this module's interface)
    CHOICES, FIELDS, KERNELS, PADDINGS, PRESETS, QUANTIZE, Spec, preset, resolve)
from jaxsr.ops.imresize import imresize, imresize_np

# floor() tolerance on the 0-255 scale: float32 round-off of a blur can leave an exact
# integer at n - 1e-4, which must not floor to n - 1 (e.g. a constant image).
FLOOR_TOL = 1e-3

# ---------------------------------------------------------------------------------------
# Parameter sampling (per sample, from a key or a numpy Generator)
# ---------------------------------------------------------------------------------------

def _sigma(u, spec: Spec, xp):
    lo, hi = spec.sigma_min, spec.sigma_max
    if spec.sample_variance:
        return xp.sqrt(lo * lo + u * (hi * hi - lo * lo))
    return lo + u * (hi - lo)


def _n_disturb(spec: Spec) -> int:
    return spec.kernel_size ** 2 if spec.kernel_disturb > 0 else 0


def _motion_offset(spec: Spec) -> int:
    """Index of the motion coin in the uniforms (after the fixed 8 and the disturbance)."""
    return 8 + _n_disturb(spec)


def _n_uniforms(spec: Spec) -> int:
    motion = 1 + motion_kernels.N_UNIFORMS if spec.motion_prob > 0 else 0
    return _motion_offset(spec) + motion


def _n_normals(spec: Spec) -> int:
    return motion_kernels.N_NORMALS if spec.motion_prob > 0 else 0


def _pick(u, n: int, xp):
    """A uniform in [0, 1) -> an integer in 0..n-1."""
    return xp.clip(xp.floor(u * n), 0, n - 1).astype(xp.int32)


def _params_from_uniforms(u, spec: Spec, xp, normals=None) -> dict:
    """One sample's parameters from a vector of U[0,1) draws and, for motion kernels,
    `_n_normals(spec)` standard normals (shared by JAX and NumPy, so both paths have the
    same distributions; one random call keeps compile time low).

    Layout: u[0:3] sigma_x, sigma_y, theta; u[3] KAIR shift sf; u[4] dihedral index;
    u[5] noise-level index; u[6] noise level; u[7] no-noise coin; then the kernel
    disturbance (kernel_size^2 when used); then the motion coin and motion_kernels'
    N_UNIFORMS (when motion_prob > 0).
    """
    out = {}
    if spec.kernel != "none":
        sx = _sigma(u[0], spec, xp)
        iso = spec.kernel == "iso"
        sy = sx if iso else _sigma(u[1], spec, xp)
        theta = 0.0 * u[2] if iso else spec.theta_min + u[2] * (spec.theta_max - spec.theta_min)
        sf = {"none": 1.0, "scale": float(spec.scale),
              "kair": 1.0 + _pick(u[3], 4, xp).astype(xp.float32)}[spec.kernel_shift]
        mu = -0.5 * (sf - 1.0)
        ks = spec.kernel_size
        d = (u[8:8 + ks * ks].reshape(ks, ks) * spec.kernel_disturb
             if spec.kernel_disturb > 0 else None)
        kern_fn, dih_fn = ((K.gaussian_kernel, K.dihedral) if xp is jnp
                           else (K.gaussian_kernel_np, K.dihedral_np))
        k = kern_fn(ks, sx, sy, theta, (mu, mu), d)
        if spec.kernel_dihedral:       # KAIR flips/rotates its Gaussian kernels only
            k = dih_fn(k, _pick(u[4], 8, xp))
        if spec.motion_prob > 0:
            m = _motion_offset(spec)
            motion = u[m] < spec.motion_prob
            mk = motion_kernels.motion_kernel(normals, u[m + 1:], ks, xp)
            k = xp.where(motion, mk.astype(k.dtype), k)
            out["motion"] = motion
        out["kernel"] = k
        out.update(sigma_x=sx, sigma_y=sy, theta=theta)
    if spec.has_noise:
        if spec.noise_levels:
            levels = xp.asarray(spec.noise_levels, dtype=xp.float32)
            level = levels[_pick(u[5], len(spec.noise_levels), xp)]
        else:
            level = spec.noise_min + u[6] * (spec.noise_max - spec.noise_min)
        if spec.noise_zero_prob > 0:
            level = xp.where(u[7] < spec.noise_zero_prob, 0.0, level)
        out["noise_level"] = level
    return out


def sample_params(rng, spec: Spec, batch: int, lr_hw):
    """JAX: per-sample degradation parameters for a batch (dict of [B, ...] arrays):
    'kernel' [B,k,k] (+ 'sigma_x', 'sigma_y', 'theta') when the spec blurs, and
    'noise_level' [B] with the standard-normal field 'noise' [B,h,w,3] when it adds noise."""

    def one(key):
        ku, kn = jax.random.split(key)
        # a key of its own, so that the other presets keep their random streams
        normals = (jax.random.normal(jax.random.fold_in(key, 2), (_n_normals(spec),))
                   if spec.motion_prob > 0 else None)
        out = _params_from_uniforms(jax.random.uniform(ku, (_n_uniforms(spec),)), spec, jnp,
                                    normals)
        if spec.has_noise:
            # a flat draw compiles ~4x faster than an N-d one (partitionable threefry)
            h, w = lr_hw
            out["noise"] = jax.random.normal(kn, (h * w * 3,)).reshape(h, w, 3)
        return out

    return jax.vmap(one)(jax.random.split(rng, batch))


def sample_params_np(rng: np.random.Generator, spec: Spec, batch: int, lr_hw) -> dict:
    """NumPy twin of `sample_params` (same distributions, numpy's random stream)."""
    per = []
    for _ in range(batch):
        u = rng.random(_n_uniforms(spec))
        normals = rng.standard_normal(_n_normals(spec)) if spec.motion_prob > 0 else None
        p = _params_from_uniforms(u, spec, np, normals)
        if spec.has_noise:
            p["noise"] = rng.standard_normal(tuple(lr_hw) + (3,))
        per.append(p)
    return {k: np.stack([np.asarray(p[k]) for p in per]) for k in (per[0] if per else ())}


# ---------------------------------------------------------------------------------------
# Operations (JAX): blur, quantise, the whole pipeline
# ---------------------------------------------------------------------------------------

def _pad(x, p: int, padding: str, xp):
    return xp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=padding)


def _blur_fft(xp_, kern, h, w):
    """Valid cross-correlation of padded [B,Hp,Wp,C] with [B,k,k] via FFT (circular,
    but no output touches the wrap-around because the input is already padded)."""
    hp, wp = xp_.shape[1:3]
    ks = kern.shape[-1]
    kp = jnp.zeros((kern.shape[0], hp, wp), xp_.dtype).at[:, :ks, :ks].set(kern)
    spec = jnp.fft.rfft2(xp_, axes=(1, 2)) * jnp.conj(jnp.fft.rfft2(kp, axes=(1, 2)))[..., None]
    return jnp.fft.irfft2(spec, s=(hp, wp), axes=(1, 2))[:, :h, :w]


def _blur_direct(xp_, kern, stride: int):
    """Valid cross-correlation as one grouped conv (batch x channel groups)."""
    b, hp, wp, c = xp_.shape
    lhs = xp_.transpose(1, 2, 0, 3).reshape(1, hp, wp, b * c)
    rhs = jnp.repeat(kern, c, axis=0).transpose(1, 2, 0)[:, :, None, :]
    out = jax.lax.conv_general_dilated(
        lhs, rhs.astype(lhs.dtype), (stride, stride), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=b * c,
        precision=jax.lax.Precision.HIGHEST)       # no TF32/bf16 passes before rounding
    return out.reshape(out.shape[1], out.shape[2], b, c).transpose(2, 0, 1, 3)


def blur(x, kern, padding: str = "reflect", mode: str = "correlate", stride: int = 1,
         impl: str = "auto"):
    """JAX: blur each image of x [B,H,W,C] with its own kernel kern [B,k,k] (k odd).

    `padding` is a numpy pad mode applied k//2 on each side ('reflect' = DAN,
    'edge' = MATLAB 'replicate', 'wrap' = circular); `mode='convolve'` flips the kernel
    (scipy.ndimage.convolve, KAIR) while 'correlate' does not (torch conv2d, DAN).
    `stride` keeps every stride-th output from (0, 0) (upper-left decimation).
    """
    if padding not in PADDINGS:
        raise ValueError(f"blur padding {padding!r}: use one of {tuple(PADDINGS)}")
    b, h, w, _ = x.shape
    ks = K.check_size(kern.shape[-1])
    kern = kern[:, ::-1, ::-1] if mode == "convolve" else kern
    xp_ = _pad(x, ks // 2, padding, jnp)
    if impl == "auto":
        impl = "fft" if target_platform.current() == "cpu" else "direct"
    if impl == "direct":
        return _blur_direct(xp_, kern, stride)
    return _blur_fft(xp_, kern.astype(x.dtype), h, w)[:, ::stride, ::stride]


def quantize(x, how: str, xp=jnp):
    """8-bit quantisation on the 0-255 scale (no division)."""
    if how == "none":
        return x
    if how == "round":                 # torch.round, half to even, no clamp (NLCUnet)
        return xp.round(x)
    if how == "round_clip":            # MATLAB uint8(): half away from zero, saturate
        return xp.floor(xp.clip(x, 0.0, 255.0) + 0.5)
    if how == "floor":                 # uint8 cast of a float (scipy on uint8 input)
        return xp.floor(xp.clip(x + FLOOR_TOL, 0.0, 255.0))
    raise ValueError(f"quantize {how!r}: use one of {QUANTIZE}")


def apply_degradation(hr255, params: dict, spec: Spec):
    """JAX: HR [B,H,W,3] on the 0-255 scale + explicit params -> LR on the 0-255 scale."""
    s, x = spec.scale, hr255
    decimate = spec.downsample == "decimate"
    if spec.kernel != "none":
        x = blur(x, params["kernel"], spec.blur_padding, spec.blur_mode,
                 s if decimate else 1, spec.blur_impl)
        x = quantize(x, spec.blur_quantize)
    elif decimate:
        x = x[:, ::s, ::s]
    if not decimate and s != 1:
        x = imresize(x, 1.0 / s, round_intermediate=spec.bicubic_round, pixel_max=255.0)
    if spec.has_noise:
        x = x + params["noise_level"][:, None, None, None] * params["noise"].astype(x.dtype)
    return quantize(x, spec.quantize)


def _check_hr(shape, scale: int):
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"HR batch must be [B, H, W, 3], got shape {tuple(shape)}")
    if shape[1] % scale or shape[2] % scale:
        raise ValueError(f"HR size {shape[1]}x{shape[2]} is not a multiple of "
                         f"config.scale={scale} (modcrop it first)")
    return shape[1] // scale, shape[2] // scale


def synthesize_lr(hr, rng, config):
    """THE training entry point: HR float [B,H,W,3] in [0,1] -> LR float [B,H/s,W/s,3]."""
    spec = config if isinstance(config, Spec) else resolve(config)
    if not jnp.issubdtype(hr.dtype, jnp.floating):
        raise ValueError(f"synthesize_lr expects float HR in [0, 1], got dtype {hr.dtype}")
    hr = jnp.asarray(hr, jnp.float32)
    lr_hw = _check_hr(hr.shape, spec.scale)
    params = sample_params(rng, spec, hr.shape[0], lr_hw)
    return apply_degradation(hr * 255.0, params, spec) / 255.0


# ---------------------------------------------------------------------------------------
# NumPy / SciPy path (data preparation, blind test sets)
# ---------------------------------------------------------------------------------------

def blur_np(x, kern, padding: str = "reflect", mode: str = "correlate", stride: int = 1):
    """NumPy float64 twin of `blur` (SciPy FFT convolution; exact to ~1e-12)."""
    from scipy import signal
    x = np.asarray(x, np.float64)
    kern = np.asarray(kern, np.float64)
    ks = K.check_size(kern.shape[-1])
    kern = kern[:, ::-1, ::-1] if mode == "convolve" else kern
    xp_ = _pad(x, ks // 2, padding, np)
    # correlation == convolution with the flipped kernel
    out = np.stack([signal.fftconvolve(xp_[i], kern[i, ::-1, ::-1, None], mode="valid")
                    for i in range(x.shape[0])])
    return out[:, ::stride, ::stride]


def apply_degradation_np(hr255, params: dict, spec: Spec) -> np.ndarray:
    """NumPy float64 twin of `apply_degradation` (HR uint8 or 0-255 floats, [B,H,W,3])."""
    s, x = spec.scale, np.asarray(hr255, np.float64)
    _check_hr(x.shape, s)
    decimate = spec.downsample == "decimate"
    if spec.kernel != "none":
        x = blur_np(x, params["kernel"], spec.blur_padding, spec.blur_mode, s if decimate else 1)
        x = quantize(x, spec.blur_quantize, np)
    elif decimate:
        x = x[:, ::s, ::s]
    if not decimate and s != 1:
        x = imresize_np(x, 1.0 / s, round_intermediate=spec.bicubic_round, pixel_max=255.0)
    if spec.has_noise:
        x = x + np.asarray(params["noise_level"])[:, None, None, None] * params["noise"]
    return quantize(x, spec.quantize, np)


def synthesize_lr_np(hr_uint8, rng: np.random.Generator, config, return_params: bool = False):
    """Data-prep twin of `synthesize_lr`: HR uint8 [B,H,W,3] or [H,W,3] -> LR float32 in
    [0, 1] (same shape convention), drawing parameters from a numpy Generator."""
    spec = config if isinstance(config, Spec) else resolve(config)
    hr = np.asarray(hr_uint8)
    single = hr.ndim == 3
    hr = hr[None] if single else hr
    lr_hw = _check_hr(hr.shape, spec.scale)
    params = sample_params_np(rng, spec, hr.shape[0], lr_hw)
    lr = (apply_degradation_np(hr, params, spec) / 255.0).astype(np.float32)
    lr = lr[0] if single else lr
    return (lr, params) if return_params else lr


def to_uint8(lr01) -> np.ndarray:
    """[0,1] LR -> uint8 (round half away from zero, clip), for writing PNGs."""
    return quantize(np.asarray(lr01, np.float64) * 255.0, "round_clip", np).astype(np.uint8)


def _make_lr_fn(name: str):
    def fn(hr_uint8, scale: int, rng: np.random.Generator) -> np.ndarray:
        return to_uint8(synthesize_lr_np(hr_uint8, rng, Spec(scale=scale, **preset(name, scale))))
    return fn


# `python -m jaxsr.tools.make_lr --degradation <name>`: one LR file per HR (EDSR layout, no
# manifest, one random stream over the files). Test sets with manifests: `--blind_set`.
MAKE_LR_PRESETS = {n: _make_lr_fn(n) for n in ("bd", "dn10", "dn15", "dn20", "dn25", "dn30",
                                              "nlcunet_iso", "nlcunet_aniso", "kenet", "kair")}
