"""EDSR (Lim et al. 2017), as in EDSR-PyTorch: the baseline (16 blocks, 64 features,
res_scale 1) and the large model (32 blocks, 256 features, res_scale 0.1).

Input and output are NHWC RGB in [0, rgb_range]; the MeanShift convs of the torch model
are constants here (they are frozen there) and are written back by the converter.
"""
import flax.linen as nn

from jaxsr.models import common


class EDSR(nn.Module):
    scale: int
    n_resblocks: int = 16
    n_feats: int = 64
    res_scale: float = 1.0
    rgb_range: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = common.mean_shift(x, -1.0, self.rgb_range)
        x = common.conv(self.n_feats, name="head_0")(x)
        res = x
        for i in range(self.n_resblocks):
            res = common.ResBlock(self.n_feats, self.res_scale, name=f"body_{i}")(res)
        res = common.conv(self.n_feats, name=f"body_{self.n_resblocks}")(res)
        x = res + x
        x = common.Upsampler(self.scale, self.n_feats, name="tail_0")(x)
        x = common.conv(3, name="tail_1")(x)
        return common.mean_shift(x, 1.0, self.rgb_range)


def build(config):
    m = config.model
    return EDSR(scale=config.scale, n_resblocks=m.n_resblocks, n_feats=m.n_feats,
                res_scale=m.res_scale, rgb_range=m.get("rgb_range", 1.0))
