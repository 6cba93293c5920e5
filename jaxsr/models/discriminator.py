"""Real-ESRGAN's U-Net discriminator with spectral normalisation (NLCUnetGAN's D).

`UNetDiscriminatorSN(num_in_ch=3, num_feat=64, skip_connection=True)`: conv0 3x3 (bias,
no SN); conv1-3 4x4 stride 2 padding 1 (SN, no bias) 64->128->256->512; conv4-6 3x3 (SN,
no bias) 512->256->128->64, each after a bilinear x2 upsample (align_corners=False) and
followed by the matching encoder feature; conv7, conv8 3x3 64->64 (SN, no bias); conv9
3x3 64->1 with bias. LeakyReLU(0.2) after every conv but conv9. Output: per-pixel logits,
NHWC [N, H, W, 1].

Spectral norm is `flax.linen.SpectralNorm` (one power iteration per call, like torch's
`spectral_norm`); its `u` vectors and `sigma` live in the 'batch_stats' collection
(module `convK_sn`), which the caller passes with `mutable=['batch_stats']` and
`update_stats=True` while training D. Params are `convK/kernel` as in the torch names.
Unlike torch, flax runs the power iteration in eval mode too (it just does not store it).
The input sides must be multiples of 8 (three stride-2 convs, then three x2 upsamples).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsr.models import init as init_lib


# torch's default Conv2d init, kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in));
# Real-ESRGAN's discriminator keeps it. (Biases start at 0 here unless
# config.model.init='torch', jaxsr.objectives.gan.)
TORCH_DEFAULT_INIT = init_lib.TORCH_DEFAULT_KERNEL


def _conv(features, k, stride=1, use_bias=True, name=None):
    pad = 1   # torch padding: 1 for both the 3x3 and the 4x4 stride-2 convs
    return nn.Conv(features, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=use_bias, kernel_init=TORCH_DEFAULT_INIT, name=name)


def upsample_bilinear2x(x):
    """F.interpolate(scale_factor=2, mode='bilinear', align_corners=False) in NHWC.

    For an exact x2 upscale jax's half-pixel bilinear (out-of-range taps dropped and
    renormalised) equals torch's (source index clamped to the border).
    """
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), "bilinear", antialias=False)


class UNetDiscriminatorSN(nn.Module):
    num_feat: int = 64
    skip_connection: bool = True

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        if x.shape[1] % 8 or x.shape[2] % 8:
            raise ValueError(f"UNetDiscriminatorSN needs H and W divisible by 8, got {x.shape}")
        nf = self.num_feat
        act = lambda t: nn.leaky_relu(t, 0.2)

        def sn_conv(t, features, k, stride, name):
            layer = _conv(features, k, stride, use_bias=False, name=name)
            return nn.SpectralNorm(layer, name=f"{name}_sn")(t, update_stats=update_stats)

        x0 = act(_conv(nf, 3, name="conv0")(x))
        x1 = act(sn_conv(x0, nf * 2, 4, 2, "conv1"))
        x2 = act(sn_conv(x1, nf * 4, 4, 2, "conv2"))
        x3 = act(sn_conv(x2, nf * 8, 4, 2, "conv3"))
        y = act(sn_conv(upsample_bilinear2x(x3), nf * 4, 3, 1, "conv4"))
        y = y + x2 if self.skip_connection else y
        y = act(sn_conv(upsample_bilinear2x(y), nf * 2, 3, 1, "conv5"))
        y = y + x1 if self.skip_connection else y
        y = act(sn_conv(upsample_bilinear2x(y), nf, 3, 1, "conv6"))
        y = y + x0 if self.skip_connection else y
        y = act(sn_conv(y, nf, 3, 1, "conv7"))
        y = act(sn_conv(y, nf, 3, 1, "conv8"))
        return _conv(1, 3, name="conv9")(y)


def build(config):
    d = config.get("discriminator", None)
    nf = d.get("num_feat", 64) if d is not None else 64
    skip = d.get("skip_connection", True) if d is not None else True
    return UNetDiscriminatorSN(num_feat=nf, skip_connection=skip)
