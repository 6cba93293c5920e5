"""DLSN (spec 3.2): GLAFFM groups of LFFBs + GLA + conv, on the EDSR skeleton."""
import torch
from torch import nn

from . import common
from .lsh import GLA


class LFFB(nn.Module):
    """conv3 -> ReLU -> conv3 + input; DLSN ignores res_scale here (always 1)."""

    def __init__(self, conv, n_feats):
        super().__init__()
        self.body = nn.Sequential(conv(n_feats, n_feats, 3), nn.ReLU(True),
                                  conv(n_feats, n_feats, 3))

    def forward(self, x):
        return self.body(x) + x


class GLAFFM(nn.Module):
    def __init__(self, conv, n_feats, n_resblocks, res_scale, chunk_size, n_hashes, reduction):
        super().__init__()
        body = [LFFB(conv, n_feats) for _ in range(n_resblocks)]
        body.append(GLA(n_hashes=n_hashes, channels=n_feats, reduction=reduction,
                        chunk_size=chunk_size, res_scale=1.0))
        body.append(conv(n_feats, n_feats, 3))
        self.body = nn.Sequential(*body)
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x) * self.res_scale + x


class DLSN(nn.Module):
    def __init__(self, scale, n_resgroups=10, n_resblocks=4, n_feats=256, res_scale=0.1,
                 chunk_size=128, n_hashes=3, reduction=4, rgb_range=1.0):
        super().__init__()
        conv = common.default_conv
        self.a = nn.Parameter(torch.zeros(1))      # unused in forward, first state_dict key
        self.sub_mean = common.MeanShift(rgb_range, sign=-1)
        self.add_mean = common.MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(conv(3, n_feats, 3))
        body = [GLAFFM(conv, n_feats, n_resblocks, res_scale, chunk_size, n_hashes, reduction)
                for _ in range(n_resgroups)]
        body.append(conv(n_feats, n_feats, 3))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(common.Upsampler(conv, scale, n_feats), conv(n_feats, 3, 3))

    def attention_layers(self):
        return [g.body[-2] for g in self.body[:-1]]

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))
