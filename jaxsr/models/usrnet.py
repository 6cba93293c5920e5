"""USRNet (Zhang, Van Gool, Timofte, CVPR 2020), as in KAIR `models/network_usrnet_v1.py`.

Non-blind and scale-free: the LR image, the blur kernel, the scale factor and the noise
level are all inputs. Deep unfolding of half-quadratic splitting for

    y = (x conv k) decimated by sf (upper-left pixel of each sf x sf block) + noise,

alternating `n_iter` times a closed-form data step (no parameters, FFT with circular
boundary) and a ResUNet prior; a small HyPaNet maps (sigma, sf) to the per-iteration
weights alpha_i (data step) and beta_i (prior input). Initialisation: nearest-neighbour
upsampling of the LR image.

Call: `model.apply({'params': p}, lr, kernel=k, sigma=s, sf=None, train=False)`
  lr      [N, h, w, 3] float in [0, 1]
  kernel  [N, kh, kw] or [kh, kw] (broadcast over the batch), one kernel for the three
          channels, convolution convention (KAIR: `scipy.ndimage.convolve(..., 'wrap')`)
  sigma   noise std on the [0, 1] scale, scalar or [N] (default `self.sigma`, 0)
  sf      scale factor, a Python int (default `self.scale`); every value compiles once
Returns [N, h*sf, w*sf, 3], not clamped. Without a kernel the call fails (USRNet is
non-blind; `jaxsr.models.blind` pairs it with KENet), except in `init`, where parameters
do not depend on the kernel.

Parity choices (architectures.md section 6): the reference is `network_usrnet_v1.py`
(torch.fft; the legacy file zeroes tiny imaginary parts of the OTF, a round-off-level
difference we do not reproduce). Softplus is jax's log1p(exp(x)) where torch switches to
the identity above 20: the difference is below 2e-9.

Parameter names (for the converter): a KAIR key is split at the dots, every integer part N
(an `nn.Sequential` index) becomes the module `layers_N`, and `weight` becomes `kernel`:
  p.m_head.weight               -> p/m_head/kernel
  p.m_down1.0.res.2.weight      -> p/m_down1/layers_0/res/layers_2/kernel
  p.m_down1.2.weight            -> p/m_down1/layers_2/kernel          (2x2 stride-2 conv)
  p.m_body.1.res.0.weight       -> p/m_body/layers_1/res/layers_0/kernel
  p.m_up3.0.weight              -> p/m_up3/layers_0/kernel            (ConvTranspose)
  p.m_up3.1.res.0.weight        -> p/m_up3/layers_1/res/layers_0/kernel
  p.m_tail.weight               -> p/m_tail/kernel
  h.mlp.0.weight / .bias        -> h/mlp/layers_0/kernel / bias       (1x1 convs)
Convs: OIHW -> HWIO (transpose 2, 3, 1, 0). ConvTranspose2d [I, O, 2, 2] -> transpose
(2, 3, 0, 1) to [2, 2, I, O] **and flip both spatial axes** (flax `ConvTranspose` with
`transpose_kernel=False`). No biases except HyPaNet's.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.models import init as init_lib
from jaxsr.models import kernel_convention

HAS_PARAMS = True
# config.model.init='torch': torch defaults; the up-sampling ConvTranspose2d layers take
# torch's transposed fan-in. (KAIR trains with its own init_weights from the options
# file; that choice is not reproduced here.)
INIT_RULES = ((r"(^|/)m_up\d/layers_0$", init_lib.torch_transposed),)
EVAL_EXTRAS = ("kernel",)      # jaxsr.evaluate passes a blind set's kernel as kernel=


# ---------------------------------------------------------------------------------------
# The data step: closed-form solution of a least-squares problem in the Fourier domain.

def _fft2(x):
    return jnp.fft.fft2(x, axes=(1, 2))


def _ifft2(x):
    return jnp.fft.ifft2(x, axes=(1, 2))


def p2o(kernel: jnp.ndarray, shape: tuple[int, int]) -> jnp.ndarray:
    """OTF of `kernel` [N, kh, kw] for images of `shape` (H, W): [N, H, W] complex.

    The kernel is zero-padded to H x W at the top-left, then rolled so that its centre
    tap (kh//2, kw//2) sits at (0, 0); multiplying spectra is then circular convolution.
    """
    n, kh, kw = kernel.shape
    h, w = shape
    if kh > h or kw > w:
        raise ValueError(f"blur kernel {kh}x{kw} is larger than the {h}x{w} HR image")
    otf = jnp.zeros((n, h, w), kernel.dtype).at[:, :kh, :kw].set(kernel)
    otf = jnp.roll(otf, (-(kh // 2), -(kw // 2)), axis=(1, 2))
    return jnp.fft.fft2(otf, axes=(1, 2))


def blur_wrap(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Circular convolution of x [N, H, W, C] with kernel [N, kh, kw] (scipy 'wrap' convolve)."""
    fb = p2o(kernel.astype(jnp.float32), x.shape[1:3])[..., None]
    return jnp.real(_ifft2(_fft2(x) * fb)).astype(x.dtype)


def zero_upsample(x: jnp.ndarray, sf: int) -> jnp.ndarray:
    """S^T y: each LR pixel at the upper-left of its sf x sf block, zeros elsewhere."""
    n, h, w, c = x.shape
    return jnp.zeros((n, h * sf, w * sf, c), x.dtype).at[:, ::sf, ::sf].set(x)


def block_mean(a: jnp.ndarray, sf: int) -> jnp.ndarray:
    """Mean over the sf x sf distinct blocks of a [N, H, W, C] (KAIR `splits` + mean)."""
    n, h, w, c = a.shape
    return a.reshape(n, sf, h // sf, sf, w // sf, c).mean(axis=(1, 3))


def precompute(lr: jnp.ndarray, kernel: jnp.ndarray, sf: int):
    """(FB, conj FB, |FB|^2, conj(FB) * FFT(S^T y)); FB is [N, H, W, 1] for all channels."""
    n, h, w, _ = lr.shape
    fb = p2o(kernel, (h * sf, w * sf))[..., None]
    fbc = jnp.conj(fb)
    f2b = jnp.abs(fb) ** 2
    fbfy = fbc * _fft2(zero_upsample(lr, sf))
    return fb, fbc, f2b, fbfy


def data_step(x, fb, fbc, f2b, fbfy, alpha, sf: int):
    """argmin_z ||y - (z conv k) down_sf||^2 + alpha ||z - x||^2, exactly (circular boundary).

    Woodbury on the block-diagonal structure of decimation in frequency; alpha [N,1,1,1].
    """
    fr = fbfy + _fft2(alpha * x)
    fbr = block_mean(fb * fr, sf)
    inv_w = block_mean(f2b, sf)
    inv_wbr = fbr / (inv_w + alpha)
    fcb_inv_wbr = fbc * jnp.tile(inv_wbr, (1, sf, sf, 1))
    return jnp.real(_ifft2((fr - fcb_inv_wbr) / alpha))


def classical_degradation(hr: jnp.ndarray, kernel: jnp.ndarray, sf: int,
                          sigma=0.0, noise: jnp.ndarray | None = None) -> jnp.ndarray:
    """KAIR's classical model in float: wrap-mode convolution, keep [0::sf, 0::sf], + sigma*noise.

    `noise` is a standard-normal array of the LR shape (pass `jax.random.normal(...)`).
    KAIR convolves the uint8 HR and truncates to uint8 before decimation; that
    quantisation is left to the data pipeline (`jaxsr.data.degradations`).
    """
    lr = blur_wrap(hr, kernel)[:, ::sf, ::sf, :]
    if noise is not None:
        lr = lr + jnp.reshape(jnp.asarray(sigma, lr.dtype), (-1, 1, 1, 1)) * noise
    return lr


# ---------------------------------------------------------------------------------------
# Networks.

def _conv(features, k=3, stride=1, name=None, bias=False):
    pad = 0 if stride > 1 else k // 2
    return nn.Conv(features, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=bias, name=name)


class _ConvReluConv(nn.Module):
    """KAIR `conv(mode='CRC')`: Sequential(conv3, ReLU, conv3), no bias (keys res.0 / res.2)."""
    features: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(_conv(self.features, name="layers_0")(x))
        return _conv(self.features, name="layers_2")(x)


class ResBlock(nn.Module):
    """KAIR `ResBlock(mode='CRC', bias=False)`: x + res(x)."""
    features: int

    @nn.compact
    def __call__(self, x):
        return x + _ConvReluConv(self.features, name="res")(x)


class _Down(nn.Module):
    """nb ResBlocks (layers_0..nb-1), then a 2x2 stride-2 conv (layers_nb)."""
    features: int
    out_features: int
    nb: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.nb):
            x = ResBlock(self.features, name=f"layers_{i}")(x)
        return _conv(self.out_features, k=2, stride=2, name=f"layers_{self.nb}")(x)


class _Up(nn.Module):
    """A 2x2 stride-2 ConvTranspose (layers_0), then nb ResBlocks (layers_1..nb)."""
    features: int
    nb: int

    @nn.compact
    def __call__(self, x):
        x = nn.ConvTranspose(self.features, (2, 2), strides=(2, 2), padding="VALID",
                             use_bias=False, name="layers_0")(x)
        for i in range(self.nb):
            x = ResBlock(self.features, name=f"layers_{i + 1}")(x)
        return x


class _Body(nn.Module):
    features: int
    nb: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.nb):
            x = ResBlock(self.features, name=f"layers_{i}")(x)
        return x


class ResUNet(nn.Module):
    """The prior: a 4-level residual U-Net with additive skips, all convs bias-free."""
    out_nc: int = 3
    nc: Sequence[int] = (64, 128, 256, 512)
    nb: int = 2

    @nn.compact
    def __call__(self, x):
        h, w = x.shape[1:3]
        # Replicate-pad bottom/right to a multiple of 8 (three stride-2 levels), crop back.
        x = jnp.pad(x, ((0, 0), (0, -h % 8), (0, -w % 8), (0, 0)), mode="edge")
        nc, nb = self.nc, self.nb
        x1 = _conv(nc[0], name="m_head")(x)
        x2 = _Down(nc[0], nc[1], nb, name="m_down1")(x1)
        x3 = _Down(nc[1], nc[2], nb, name="m_down2")(x2)
        x4 = _Down(nc[2], nc[3], nb, name="m_down3")(x3)
        x = _Body(nc[3], nb, name="m_body")(x4)
        x = _Up(nc[2], nb, name="m_up3")(x + x4)
        x = _Up(nc[1], nb, name="m_up2")(x + x3)
        x = _Up(nc[0], nb, name="m_up1")(x + x2)
        x = _conv(self.out_nc, name="m_tail")(x + x1)
        return x[:, :h, :w, :]


class _MLP(nn.Module):
    """HyPaNet's `mlp`: 1x1 conv, ReLU, 1x1 conv, ReLU, 1x1 conv, Softplus (layers 0/2/4)."""
    channel: int
    out_nc: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(_conv(self.channel, k=1, bias=True, name="layers_0")(x))
        x = nn.relu(_conv(self.channel, k=1, bias=True, name="layers_2")(x))
        return nn.softplus(_conv(self.out_nc, k=1, bias=True, name="layers_4")(x))


class HyPaNet(nn.Module):
    """(sigma, sf) as a [N, 1, 1, 2] map -> [N, 1, 1, 2 * n_iter] positive weights."""
    out_nc: int
    channel: int = 64

    @nn.compact
    def __call__(self, x):
        return _MLP(self.channel, self.out_nc, name="mlp")(x) + 1e-6


class USRNet(nn.Module):
    scale: int = 4             # default sf; any sf may be passed at call time
    n_iter: int = 8
    h_nc: int = 64
    out_nc: int = 3
    nc: Sequence[int] = (64, 128, 256, 512)
    nb: int = 2
    sigma: float = 0.0         # default noise level (std on the [0, 1] scale)

    @nn.compact
    def __call__(self, lr, kernel=None, sigma=None, sf: int | None = None, train: bool = False):
        del train
        kernel = require_kernel(self, kernel, "usrnet")
        hypanet = HyPaNet(2 * self.n_iter, self.h_nc, name="h")
        prior = ResUNet(self.out_nc, tuple(self.nc), self.nb, name="p")
        sf = int(self.scale if sf is None else sf)
        return unfold(lr, kernel, self.sigma if sigma is None else sigma, sf, hypanet, prior,
                      self.n_iter)


def require_kernel(module: nn.Module, kernel, model_name: str):
    """The given kernel; at init time a 1x1 delta stands in (parameters do not depend on it)."""
    if kernel is not None:
        return kernel
    if module.is_initializing():
        return jnp.ones((1, 1), jnp.float32)
    raise ValueError(f"model {model_name!r} is non-blind: call it with kernel=[N, kh, kw] "
                     "(evaluation passes the kernel of blind test sets; 'kenet_usrnet' "
                     "estimates it instead)")


def unfold(lr, kernel, sigma, sf: int, hypanet, prior, n_iter: int):
    """The USRNet forward given its two networks (shared with jaxsr.models.blind)."""
    n = lr.shape[0]
    kernel = jnp.asarray(kernel, jnp.float32)
    kernel = jnp.broadcast_to(kernel, (n,) + kernel.shape[-2:])
    sigma = jnp.broadcast_to(jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1,)), (n,))
    fb, fbc, f2b, fbfy = precompute(lr, kernel, sf)
    x = jnp.repeat(jnp.repeat(lr, sf, axis=1), sf, axis=2)      # nearest-neighbour init
    hyper_in = jnp.stack([sigma, jnp.full((n,), float(sf))], axis=-1)[:, None, None, :]
    ab = hypanet(hyper_in)                                       # [N, 1, 1, 2 n_iter]
    for i in range(n_iter):
        alpha = ab[..., i:i + 1]
        beta = ab[..., n_iter + i:n_iter + i + 1]
        x = data_step(x, fb, fbc, f2b, fbfy, alpha, sf)
        x = prior(jnp.concatenate([x, jnp.broadcast_to(beta, x.shape[:3] + (1,))], -1))
    return x


VARIANTS = {
    # KAIR `usrnet.pth` (17,016,016 params) and `usrnet_tiny.pth` (590,332 params).
    "usrnet": dict(n_iter=8, h_nc=64, nc=(64, 128, 256, 512), nb=2),
    "usrnet_tiny": dict(n_iter=6, h_nc=32, nc=(16, 32, 64, 64), nb=2),
}


def from_model_config(m, scale: int) -> USRNet:
    """USRNet from a config.model-like ConfigDict (variant, optional overrides)."""
    kw = dict(VARIANTS[m.get("variant", "usrnet")])
    for key in ("n_iter", "h_nc", "nb"):
        if m.get(key, None) is not None:
            kw[key] = int(m[key])
    if m.get("nc", None):
        kw["nc"] = tuple(int(c) for c in m.nc)
    return USRNet(scale=scale, sigma=float(m.get("sigma", 0.0)), **kw)


def build(config):
    m = config.model
    if m.get("variant", "usrnet") not in VARIANTS:
        raise ValueError(f"config.model.variant={m.variant!r}: one of {sorted(VARIANTS)}")
    return from_model_config(m, config.scale)


def num_params(params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def prepare_extras(config, extras: dict) -> dict:
    """The kernel in USRNet's convention for the set (effective kernel of blur + bicubic
    sets, DIV2KRK converted): the same rule as the KENet/true-kernel pipelines."""
    return kernel_convention.prepare_extras(config, extras)
