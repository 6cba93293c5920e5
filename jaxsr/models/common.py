"""Building blocks shared by the EDSR-family networks (EDSR, NLSN, DLSN, RCAN, ...).

Submodule names mirror the PyTorch names of EDSR-PyTorch's `common.py` so that checkpoint
conversion is a table of renames: a torch key `body.3.body.0.weight` is the Flax path
`body_3/body_0/kernel`.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

# DIV2K RGB mean used by EDSR/NLSN/DLSN's MeanShift (rgb_range 1).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv(features: int, kernel_size: int = 3, *, use_bias: bool = True, groups: int = 1,
         name: str | None = None) -> nn.Conv:
    """PyTorch `default_conv`: stride 1, zero padding k//2 on every side."""
    pad = kernel_size // 2
    return nn.Conv(features, (kernel_size, kernel_size), padding=((pad, pad), (pad, pad)),
                   use_bias=use_bias, feature_group_count=groups, name=name)


def pixel_shuffle(x: jnp.ndarray, r: int) -> jnp.ndarray:
    """NHWC depth-to-space with PyTorch's channel order: channel c*r*r + i*r + j -> (c, i, j)."""
    n, h, w, c = x.shape
    oc = c // (r * r)
    x = x.reshape(n, h, w, oc, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)          # n, h, i, w, j, c
    return x.reshape(n, h * r, w * r, oc)


def pixel_unshuffle(x: jnp.ndarray, r: int) -> jnp.ndarray:
    """Inverse of `pixel_shuffle` (PyTorch `PixelUnshuffle`)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // r, r, w // r, r, c)
    x = x.transpose(0, 1, 3, 5, 2, 4)          # n, h, w, c, i, j
    return x.reshape(n, h // r, w // r, c * r * r)


def mean_shift(x: jnp.ndarray, sign: float,
               mean: Sequence[float] = DIV2K_RGB_MEAN) -> jnp.ndarray:
    """EDSR's frozen MeanShift (identity weight, std 1) at rgb_range 1: x + sign * mean.

    Models take [0, 1] images (rgb_range 1, as NLSN/DLSN train); checkpoints trained at
    rgb_range 255 are rescaled by the converter (`--rgb_range 255`).
    """
    return x + sign * jnp.asarray(mean, x.dtype)


def edsr_frame(x, body, *, scale: int, n_feats: int, n_body: int):
    """The frame EDSR, NLSN, DLSN and RCAN share, called from a module's compact method:
    MeanShift, `head_0`, `body(features)` followed by the conv `body_<n_body>` and the
    global skip, `tail_0` upsampler, `tail_1` conv to RGB, MeanShift back."""
    x = mean_shift(x, -1.0)
    x = conv(n_feats, name="head_0")(x)
    res = conv(n_feats, name=f"body_{n_body}")(body(x))
    x = Upsampler(scale, n_feats, name="tail_0")(res + x)
    # The mean is added back in float32 (a no-op cast in float32): in bfloat16 an image
    # near 1 would be rounded to steps of 2^-8, as coarse as the uint8 output itself.
    return mean_shift(conv(3, name="tail_1")(x).astype(jnp.float32), 1.0)


class ResBlock(nn.Module):
    """conv3 -> ReLU -> conv3, scaled by `res_scale`, plus the input (torch keys body.0/body.2)."""
    features: int
    res_scale: float = 1.0
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        y = conv(self.features, self.kernel_size, name="body_0")(x)
        y = nn.relu(y)
        y = conv(self.features, self.kernel_size, name="body_2")(y)
        return y * self.res_scale + x


class Upsampler(nn.Module):
    """EDSR upsampler: x2/x3 one conv + PixelShuffle, x4 twice (conv, PS(2)).

    Convs are named after their index in the torch `nn.Sequential` (0, 2 for x4), so the
    torch key `tail.0.2.weight` is `tail_0/layers_2/kernel` here.
    """
    scale: int
    features: int

    @nn.compact
    def __call__(self, x):
        if self.scale in (2, 3):
            x = conv(self.features * self.scale ** 2, name="layers_0")(x)
            return pixel_shuffle(x, self.scale)
        if self.scale == 4:
            for i in range(2):
                x = conv(self.features * 4, name=f"layers_{2 * i}")(x)
                x = pixel_shuffle(x, 2)
            return x
        raise ValueError(f"EDSR upsampler supports scale 2, 3 or 4, got {self.scale}")
