"""FSRCNN (Dong, Loy, Tang, ECCV 2016): d=56, s=12, m=4, PReLU, 9x9 transposed-conv tail.

    first_part   conv5 1->d, PReLU                    (feature extraction)
    mid_part     conv1 d->s, PReLU                    (shrinking)
                 m x [conv3 s->s, PReLU]              (mapping)
                 conv1 s->d, PReLU                    (expanding)
    last_part    ConvTranspose 9x9 d->1, stride scale (deconvolution; torch padding 4,
                 output_padding scale-1, so the output is exactly scale x the input)

Submodule names follow the widely used PyTorch port (yjn870/FSRCNN-pytorch):
`first_part.0.weight` -> `first_part_0/kernel`, the PReLU `first_part.1.weight` ->
`first_part_1/weight`, `mid_part.<i>.*` -> `mid_part_<i>/*`, `last_part.weight` ->
`last_part/kernel` (torch ConvTranspose2d weight [in, out, 9, 9] -> transpose (2, 3, 1, 0),
like a conv: the layout of Flax's `ConvTranspose(transpose_kernel=True)`, which
`SubPixelConvTranspose` keeps while computing the layer as s*s phases + pixel shuffle).

Colour. As in the paper, the network sees only luma: the RGB input in [0, 1] is converted
to BT.601 YCbCr (MATLAB `rgb2ycbcr`: Y = 16/255 + (65.481 R + 128.553 G + 24.966 B)/255),
Y goes through the network, Cb/Cr are upscaled with MATLAB-exact bicubic
(`jaxsr.ops.imresize`), and the result is converted back, so the model keeps the project's
RGB-in/RGB-out convention and the Y channel of its output is exactly the network's Y (the
number the Y-PSNR tables measure). `color='rgb'` makes a 3-channel network instead.
Training uses the project's RGB L1 loss; its gradient reaches Y only (chroma is fixed).

GLA plug-in (`config.model.attention='gla'`, see `jaxsr.models.plugin`): position p puts a
GLA after the first p layers of `mid_part` (0: on the d-channel extracted features;
1..m+1: on s-channel features; m+2, the default: on the expanded d-channel features,
right before the deconvolution).

Parameters (Y, any scale): 12,809 = the paper's 12,464 weights + 173 biases + 172 PReLU
slopes. Initialisation as the reference code: He normal (fan_out) convs, N(0, 0.001)
deconvolution, zero biases, PReLU slopes 0.25.
"""
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.models import common, plugin
from jaxsr.models import init as init_lib
from jaxsr.ops.imresize import imresize

# MATLAB rgb2ycbcr for [0, 1] data: ycc = RGB2YCC @ rgb + OFFSET (rows Y, Cb, Cr).
RGB2YCC = np.array([[65.481, 128.553, 24.966],
                    [-37.797, -74.203, 112.0],
                    [112.0, -93.786, -18.214]]) / 255.0
YCC_OFFSET = np.array([16.0, 128.0, 128.0]) / 255.0

# config.model.init='torch': the official _initialize_weights (yjn870/FSRCNN-pytorch):
# convs N(0, 2 / (out_channels k^2)), the deconvolution N(0, 0.001^2), biases 0 (plain
# normals; the Flax initializers below are truncated). GLA plug-ins: torch defaults.
INIT_RULES = (
    (r"^(first|mid)_part_\d+$",
     init_lib.normal_zero_bias(lambda s: math.sqrt(2.0 / (s[-1] * s[0] * s[1])))),
    (r"^last_part$", init_lib.normal_zero_bias(lambda s: 0.001)),
)
YCC2RGB = np.linalg.inv(RGB2YCC)


def rgb_to_ycbcr(x):
    return x @ jnp.asarray(RGB2YCC.T, x.dtype) + jnp.asarray(YCC_OFFSET, x.dtype)


def ycbcr_to_rgb(x):
    return (x - jnp.asarray(YCC_OFFSET, x.dtype)) @ jnp.asarray(YCC2RGB.T, x.dtype)


class PReLU(nn.Module):
    """torch.nn.PReLU(num_parameters=C): one learnable slope per channel (`weight`)."""
    init: float = 0.25

    @nn.compact
    def __call__(self, x):
        a = self.param("weight", nn.initializers.constant(self.init), (x.shape[-1],))
        return jnp.where(x >= 0, x, a.astype(x.dtype) * x)


def _conv(features: int, k: int, name: str) -> nn.Conv:
    pad = k // 2
    return nn.Conv(features, (k, k), padding=((pad, pad), (pad, pad)), name=name,
                   kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


class FSRCNN(nn.Module):
    scale: int
    d: int = 56
    s: int = 12
    m: int = 4
    color: str = "y"
    gla: Optional[plugin.GLASpec] = None

    def mid_layers(self):
        """(features, kernel) of the mid_part convs, in order."""
        return [(self.s, 1)] + [(self.s, 3)] * self.m + [(self.d, 1)]

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.color not in ("y", "rgb"):
            raise ValueError(f"config.model.color={self.color!r}: use 'y' or 'rgb'")
        plugin.check_positions(self.gla, self.m + 2, "FSRCNN (0..m+2)")
        ycc = rgb_to_ycbcr(x) if self.color == "y" else None
        h = ycc[..., :1] if self.color == "y" else x
        h = PReLU(name="first_part_1")(_conv(self.d, 5, "first_part_0")(h))
        h = plugin.maybe_gla(self.gla, 0, h, train)
        for j, (features, k) in enumerate(self.mid_layers()):
            h = _conv(features, k, f"mid_part_{2 * j}")(h)
            h = PReLU(name=f"mid_part_{2 * j + 1}")(h)
            h = plugin.maybe_gla(self.gla, j + 1, h, train)
        out = self._deconv(h, 1 if self.color == "y" else 3)
        if self.color == "rgb":
            return out
        cbcr = imresize(ycc[..., 1:], float(self.scale))
        return ycbcr_to_rgb(jnp.concatenate([out, cbcr], axis=-1))

    def _deconv(self, h, channels: int):
        return SubPixelConvTranspose(channels, 9, self.scale, padding=4,
                                     kernel_init=nn.initializers.normal(0.001),
                                     name="last_part")(h)


def subpixel_taps(kernel_size: int, stride: int, padding: int) -> tuple[np.ndarray, int]:
    """Index table of `SubPixelConvTranspose` and its left padding: taps[t, r] is the row of
    the transposed-conv kernel that output phase r (of `stride`) reads through input
    offset t - hi (-1: none).

    torch's y[s*q + r] = sum_i x[i] w[s*q + r + p - s*i]: with d = q - i, phase r is a plain
    correlation of x with the taps w[s*d + r + p], d in [lo, hi] (those inside the kernel).
    """
    k, s, p = kernel_size, stride, padding
    lo, hi = -((p + s - 1) // s), (k - 1 - p) // s
    d = hi - np.arange(hi - lo + 1)[:, None]               # tap t reads x[q + t - hi]
    taps = s * d + np.arange(s)[None, :] + p
    return np.where((taps >= 0) & (taps < k), taps, -1), hi


class SubPixelConvTranspose(nn.Module):
    """torch ConvTranspose2d(k, stride s, padding p, output_padding s-1): output exactly s x
    the input. Computed as one stride-1 convolution to s*s phases + pixel shuffle: same
    result, ~s^2 fewer multiplies than convolving the zero-dilated input (XLA:CPU's
    lowering of a transposed convolution). Parameters as `nn.ConvTranspose(...,
    transpose_kernel=True)`: kernel [k, k, out, in] (= torch weight.transpose(2, 3, 1, 0)),
    bias [out]."""
    features: int
    kernel_size: int
    stride: int
    padding: int
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", self.kernel_init, (k, k, self.features, x.shape[-1]))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        taps, hi = subpixel_taps(k, s, self.padding)                   # [T, s]
        n_taps = taps.shape[0]
        w = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))         # index -1: zero tap
        w = w[taps[:, None, :, None], taps[None, :, None, :]]          # [T, T, s, s, out, in]
        w = w.transpose(0, 1, 5, 4, 2, 3).reshape(n_taps, n_taps, x.shape[-1], -1)
        pad = (hi, n_taps - 1 - hi)
        y = jax.lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), (pad, pad),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return common.pixel_shuffle(y, s) + bias.astype(x.dtype)


def build(config):
    m = config.model
    mm = m.get("m", 4)
    return FSRCNN(scale=config.scale, d=m.get("d", 56), s=m.get("s", 12), m=mm,
                  color=m.get("color", "y"),
                  gla=plugin.spec_from_config(m, default_positions=(mm + 2,)))
