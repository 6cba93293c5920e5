"""EDSR (EDSR-PyTorch `model/edsr.py` structure), rgb_range 1 by default."""
from torch import nn

from . import common


class EDSR(nn.Module):
    def __init__(self, scale, n_resblocks=16, n_feats=64, res_scale=1.0, rgb_range=1.0):
        super().__init__()
        conv = common.default_conv
        self.sub_mean = common.MeanShift(rgb_range, sign=-1)
        self.add_mean = common.MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(conv(3, n_feats, 3))
        body = [common.ResBlock(conv, n_feats, 3, res_scale) for _ in range(n_resblocks)]
        body.append(conv(n_feats, n_feats, 3))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(common.Upsampler(conv, scale, n_feats), conv(n_feats, 3, 3))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))
