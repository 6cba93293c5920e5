"""The parameter-free bicubic baseline: MATLAB `imresize(LR, scale, 'bicubic')`.

With `round_uint8=True` (default) it reproduces MATLAB on uint8 LR images: the [0, 1]
input is treated as uint8 data and every resize pass is rounded to 255 levels, so that
`quantize(model(lr_uint8 / 255))` equals MATLAB's uint8 result bit for bit; this is how
the bicubic rows of the SR tables were made. With `round_uint8=False` it is the plain
float MATLAB bicubic (differentiable, e.g. as a skip connection).
"""
import flax.linen as nn

from jaxsr.ops.imresize import imresize

HAS_PARAMS = False


class Bicubic(nn.Module):
    scale: float
    round_uint8: bool = True

    @nn.compact
    def __call__(self, lr, train: bool = False):
        del train
        return imresize(lr, self.scale, round_intermediate=self.round_uint8, pixel_max=1.0)


def build(config):
    return Bicubic(scale=config.scale, round_uint8=config.model.get("round_uint8", True))
