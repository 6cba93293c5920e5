"""EDSR-PyTorch `common.py` building blocks (spec section 1), NCHW."""
import torch
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def default_conv(in_channels, out_channels, kernel_size, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv: weight identity/std, bias sign * rgb_range * mean / std."""

    def __init__(self, rgb_range, rgb_mean=DIV2K_RGB_MEAN, rgb_std=(1.0, 1.0, 1.0), sign=-1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(rgb_mean) / std
        for p in self.parameters():
            p.requires_grad = False


class BasicBlock(nn.Sequential):
    """conv (+ activation): keys `0.*`."""

    def __init__(self, conv, in_channels, out_channels, kernel_size, bias=True, act=None):
        layers = [conv(in_channels, out_channels, kernel_size, bias=bias)]
        if act is not None:
            layers.append(act)
        super().__init__(*layers)


class ResBlock(nn.Module):
    """conv -> ReLU -> conv, times res_scale, plus input (keys body.0, body.2)."""

    def __init__(self, conv, n_feats, kernel_size, res_scale=1.0):
        super().__init__()
        self.body = nn.Sequential(conv(n_feats, n_feats, kernel_size), nn.ReLU(True),
                                  conv(n_feats, n_feats, kernel_size))
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x).mul(self.res_scale) + x


class Upsampler(nn.Sequential):
    """x2/x3: conv C->s^2 C + PixelShuffle(s); x4: twice (conv C->4C, PixelShuffle(2))."""

    def __init__(self, conv, scale, n_feats):
        layers = []
        if scale == 4:
            for _ in range(2):
                layers += [conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale in (2, 3):
            layers += [conv(n_feats, scale * scale * n_feats, 3), nn.PixelShuffle(scale)]
        else:
            raise ValueError(scale)
        super().__init__(*layers)
