"""RCAN (Zhang et al., ECCV 2018) as in EDSR-PyTorch `model/rcan.py`: residual groups of
channel-attention blocks on the EDSR skeleton (MeanShift, head, body, Upsampler tail)."""
from torch import nn

from . import common


class CALayer(nn.Module):
    """Global average pool -> 1x1 C->C/r -> ReLU -> 1x1 C/r->C -> sigmoid; scales the input."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1),
                                     nn.ReLU(inplace=True),
                                     nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    """conv3 -> ReLU -> conv3 -> CALayer (body.0, body.2, body.3), plus the input."""

    def __init__(self, conv, n_feats, reduction):
        super().__init__()
        self.body = nn.Sequential(conv(n_feats, n_feats, 3), nn.ReLU(True),
                                  conv(n_feats, n_feats, 3), CALayer(n_feats, reduction))

    def forward(self, x):
        return self.body(x) + x


class ResidualGroup(nn.Module):
    def __init__(self, conv, n_feats, reduction, n_resblocks):
        super().__init__()
        body = [RCAB(conv, n_feats, reduction) for _ in range(n_resblocks)]
        body.append(conv(n_feats, n_feats, 3))
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return self.body(x) + x


class RCAN(nn.Module):
    def __init__(self, scale, n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16,
                 rgb_range=1.0):
        super().__init__()
        conv = common.default_conv
        self.sub_mean = common.MeanShift(rgb_range, sign=-1)
        self.add_mean = common.MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(conv(3, n_feats, 3))
        body = [ResidualGroup(conv, n_feats, reduction, n_resblocks) for _ in range(n_resgroups)]
        body.append(conv(n_feats, n_feats, 3))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(common.Upsampler(conv, scale, n_feats), conv(n_feats, 3, 3))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))
