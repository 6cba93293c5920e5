"""Independent PyTorch reference of USRNet, written from architectures.md section 6.

State-dict keys are KAIR's (`p.m_head.weight`, `p.m_down1.0.res.0.weight`, ...,
`h.mlp.4.bias`; 42 keys), so a KAIR `usrnet.pth` / `usrnet_tiny.pth` loads with
`strict=True`. NCHW, torch.fft (the `network_usrnet_v1.py` variant). Test-only code: the
jaxsr package never imports torch.
"""
import re

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def p2o(psf, shape):
    """psf [N, 1, kh, kw] -> OTF [N, 1, H, W] (centre tap rolled to the origin)."""
    otf = torch.zeros(psf.shape[:-2] + tuple(shape), dtype=psf.dtype)
    otf[..., :psf.shape[-2], :psf.shape[-1]] = psf
    for axis, size in enumerate(psf.shape[-2:]):
        otf = torch.roll(otf, -(size // 2), dims=axis + 2)
    return torch.fft.fftn(otf, dim=(-2, -1))


def splits(a, sf):
    """[N, C, H, W] -> [N, C, H/sf, W/sf, sf*sf]: the sf x sf distinct blocks, stacked."""
    b = torch.stack(torch.chunk(a, sf, dim=2), dim=4)
    return torch.cat(torch.chunk(b, sf, dim=3), dim=4)


def upsample_zeros(x, sf):
    z = torch.zeros(x.shape[0], x.shape[1], x.shape[2] * sf, x.shape[3] * sf, dtype=x.dtype)
    z[..., ::sf, ::sf] = x
    return z


class DataNet(nn.Module):
    def forward(self, x, FB, FBC, F2B, FBFy, alpha, sf):
        FR = FBFy + torch.fft.fftn(alpha * x, dim=(-2, -1))
        FBR = torch.mean(splits(FB * FR, sf), dim=-1)
        invW = torch.mean(splits(F2B, sf), dim=-1)
        invWBR = FBR / (invW + alpha)
        FCBinvWBR = FBC * invWBR.repeat(1, 1, sf, sf)
        FX = (FR - FCBinvWBR) / alpha
        return torch.real(torch.fft.ifftn(FX, dim=(-2, -1)))


def conv3(i, o):
    return nn.Conv2d(i, o, 3, 1, 1, bias=False)


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.res = nn.Sequential(conv3(c, c), nn.ReLU(inplace=True), conv3(c, c))

    def forward(self, x):
        return x + self.res(x)


class ResUNet(nn.Module):
    def __init__(self, in_nc=4, out_nc=3, nc=(64, 128, 256, 512), nb=2):
        super().__init__()
        self.m_head = conv3(in_nc, nc[0])
        for lvl in range(3):
            blocks = [ResBlock(nc[lvl]) for _ in range(nb)]
            blocks.append(nn.Conv2d(nc[lvl], nc[lvl + 1], 2, 2, 0, bias=False))
            setattr(self, f"m_down{lvl + 1}", nn.Sequential(*blocks))
        self.m_body = nn.Sequential(*[ResBlock(nc[3]) for _ in range(nb)])
        for lvl in (3, 2, 1):
            layers = [nn.ConvTranspose2d(nc[lvl], nc[lvl - 1], 2, 2, 0, bias=False)]
            layers += [ResBlock(nc[lvl - 1]) for _ in range(nb)]
            setattr(self, f"m_up{lvl}", nn.Sequential(*layers))
        self.m_tail = conv3(nc[0], out_nc)

    def forward(self, x):
        h, w = x.shape[-2:]
        pb, pr = (-h) % 8, (-w) % 8
        x = F.pad(x, (0, pr, 0, pb), mode="replicate")
        x1 = self.m_head(x)
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        x = self.m_body(x4)
        x = self.m_up3(x + x4)
        x = self.m_up2(x + x3)
        x = self.m_up1(x + x2)
        x = self.m_tail(x + x1)
        return x[..., :h, :w]


class HyPaNet(nn.Module):
    def __init__(self, in_nc=2, out_nc=16, channel=64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(in_nc, channel, 1, bias=True), nn.ReLU(inplace=True),
            nn.Conv2d(channel, channel, 1, bias=True), nn.ReLU(inplace=True),
            nn.Conv2d(channel, out_nc, 1, bias=True), nn.Softplus())

    def forward(self, x):
        return self.mlp(x) + 1e-6


class USRNet(nn.Module):
    def __init__(self, n_iter=8, h_nc=64, in_nc=4, out_nc=3, nc=(64, 128, 256, 512), nb=2):
        super().__init__()
        self.d = DataNet()
        self.p = ResUNet(in_nc, out_nc, nc, nb)
        self.h = HyPaNet(2, 2 * n_iter, h_nc)
        self.n = n_iter

    def forward(self, x, k, sf, sigma):
        """x [N,3,h,w]; k [N,1,kh,kw]; sf int; sigma [N,1,1,1]."""
        h, w = x.shape[-2:]
        FB = p2o(k, (h * sf, w * sf))
        FBC = torch.conj(FB)
        F2B = torch.abs(FB) ** 2
        FBFy = FBC * torch.fft.fftn(upsample_zeros(x, sf), dim=(-2, -1))
        x = F.interpolate(x, scale_factor=sf, mode="nearest")
        ab = self.h(torch.cat((sigma, torch.full_like(sigma, float(sf))), dim=1))
        for i in range(self.n):
            x = self.d(x, FB, FBC, F2B, FBFy, ab[:, i:i + 1], sf)
            beta = ab[:, self.n + i:self.n + i + 1].repeat(1, 1, x.shape[2], x.shape[3])
            x = self.p(torch.cat((x, beta), dim=1))
        return x


def torch_to_flax(state_dict):
    """KAIR keys -> nested flax params (numpy), by the rule documented in jaxsr.models.usrnet."""
    params = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        w = value.detach().cpu().numpy()
        if parts[-1] == "weight":
            if re.fullmatch(r"p\.m_up[123]\.0\.weight", key):     # ConvTranspose2d
                w = np.flip(w.transpose(2, 3, 0, 1), axis=(0, 1))
            else:
                w = w.transpose(2, 3, 1, 0)
            leaf = "kernel"
        else:
            leaf = "bias"
        node = params
        for p in parts[:-1]:
            node = node.setdefault(f"layers_{p}" if p.isdigit() else p, {})
        node[leaf] = np.ascontiguousarray(w)
    return params
