"""Independent PyTorch reference of NLCUnet, written from architectures.md section 4
(and NLSN's NLSA from section 2.3) for parity tests. Not the official file.

Differences from the official code, all for testability and none in the maths:
* every NLSA takes its hash rotations from `module.rotations` when set (a [Cq, R, nb/2]
  tensor), otherwise draws `torch.randn` like the original;
* the bucket sort is stable (`torch.sort(stable=True)`), as JAX's argsort;
* the bicubic skip follows `scale` (the original hard-codes x4) and the model returns the
  SR tensor instead of a one-element list (loop = 1).

State-dict keys are the official ones (`Restorer.head.weight`, ...,
`Restorer.encoder_block1.0.nla.conv_match.0.weight`, `Restorer.upscale.4.bias`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCKS = (6, 8, 10, 6, 8, 8)
STAGES = ("encoder_block1", "encoder_block2", "latent_block",
          "decoder_block1", "decoder_block2", "refine_block")


class NLSA(nn.Module):
    """NLSN NonLocalSparseAttention (cross-polytope LSH, chunked, look-around)."""

    def __init__(self, channels, chunk_size=144, n_hashes=4, reduction=4, res_scale=1.0):
        super().__init__()
        self.chunk_size, self.n_hashes, self.res_scale = chunk_size, n_hashes, res_scale
        self.conv_match = nn.Sequential(nn.Conv2d(channels, channels // reduction, 3, padding=1))
        self.conv_assembly = nn.Sequential(nn.Conv2d(channels, channels, 1))
        self.rotations = None

    def forward(self, x):
        n, c, h, w = x.shape
        length, k = h * w, self.chunk_size
        q = self.conv_match(x).reshape(n, -1, length).transpose(1, 2)      # [N, L, Cq]
        v = self.conv_assembly(x).reshape(n, c, length).transpose(1, 2)    # [N, L, C]
        nb = min(length // k + (length // k) % 2, 128)
        rot = self.rotations
        if rot is None:
            rot = torch.randn(q.shape[-1], self.n_hashes, nb // 2, dtype=x.dtype)
        proj = torch.einsum("nlf,frb->nrlb", q, rot)
        codes = torch.argmax(torch.cat([proj, -proj], dim=-1), dim=-1)     # [N, R, L]
        codes = (codes + torch.arange(self.n_hashes).view(1, -1, 1) * nb).reshape(n, -1)
        order = torch.sort(codes, dim=-1, stable=True).indices
        undo = torch.sort(order, dim=-1, stable=True).indices
        src = order % length
        qs = torch.gather(q, 1, src[..., None].expand(-1, -1, q.shape[-1]))
        vs = torch.gather(v, 1, src[..., None].expand(-1, -1, c))
        qs = qs.reshape(n, self.n_hashes, length, -1)
        vs = vs.reshape(n, self.n_hashes, length, c)
        pad = (k - length % k) if length % k else 0
        if pad:
            qs = torch.cat([qs, qs[:, :, -pad:]], dim=2)
            vs = torch.cat([vs, vs[:, :, -pad:]], dim=2)
        qs = qs.reshape(n, self.n_hashes, -1, k, qs.shape[-1])
        vs = vs.reshape(n, self.n_hashes, -1, k, c)
        keys = F.normalize(qs, p=2, dim=-1, eps=5e-5)
        keys3, vs3 = self._look_around(keys), self._look_around(vs)
        s = torch.einsum("nrmic,nrmjc->nrmij", qs, keys3)
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        o = torch.einsum("nrmij,nrmjc->nrmic", torch.exp(s - lse), vs3)
        o = o.reshape(n, self.n_hashes, -1, c)[:, :, :length].reshape(n, -1, c)
        lse = lse.reshape(n, self.n_hashes, -1)[:, :, :length].reshape(n, -1)
        o = torch.gather(o, 1, undo[..., None].expand(-1, -1, c))
        lse = torch.gather(lse, 1, undo)
        o = o.reshape(n, self.n_hashes, length, c)
        wts = torch.softmax(lse.reshape(n, self.n_hashes, length, 1), dim=1)
        out = (o * wts).sum(dim=1)                                          # [N, L, C]
        return out.transpose(1, 2).reshape(n, c, h, w) * self.res_scale + x

    @staticmethod
    def _look_around(t):
        back = torch.cat([t[:, :, -1:], t[:, :, :-1]], dim=2)
        fwd = torch.cat([t[:, :, 1:], t[:, :, :1]], dim=2)
        return torch.cat([t, back, fwd], dim=3)


class LayerNorm2d(nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class CALayer(nn.Module):
    def __init__(self, c, reduction=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c // reduction, 1), nn.GELU(),
                                  nn.Conv2d(c // reduction, c, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.body(x.mean(dim=(2, 3), keepdim=True))


class GDFN(nn.Module):
    def __init__(self, c, expansion=2.66):
        super().__init__()
        hidden = int(c * expansion)
        self.project_in = nn.Conv2d(c, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden,
                                bias=False)
        self.project_out = nn.Conv2d(hidden, c, 1, bias=False)

    def forward(self, x):
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class CRB(nn.Module):
    """NLC block: pre-norm NLSA and depthwise branches, 1x1 fusion, CA, GDFN."""

    def __init__(self, c, chunk_size=144, n_hashes=4):
        super().__init__()
        self.norm1 = LayerNorm2d(c)
        self.nla = NLSA(c, chunk_size, n_hashes)
        self.conv_local = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.GELU(),
                                        nn.Conv2d(c, c, 3, padding=1, groups=c))
        self.conv1_last = nn.Conv2d(2 * c, c, 1)
        self.ca = CALayer(c)
        self.norm2 = LayerNorm2d(c)
        self.gdfn = GDFN(c)

    def forward(self, x):
        t = self.norm1(x)
        u = self.ca(self.conv1_last(torch.cat([self.nla(t), self.conv_local(t)], dim=1)))
        m = u + x
        return self.gdfn(self.norm2(m)) + m


class Resample(nn.Module):
    def __init__(self, cin, cout, up):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                  nn.PixelShuffle(2) if up else nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x)


class Restorer(nn.Module):
    def __init__(self, nf=64, scale=4, blocks=BLOCKS, chunk_size=144, n_hashes=4):
        super().__init__()
        self.scale = scale
        widths = (nf, 2 * nf, 4 * nf, 2 * nf, 2 * nf, 2 * nf)
        self.head = nn.Conv2d(3, nf, 3, padding=1)
        for name, n_blocks, c in zip(STAGES, blocks, widths):
            setattr(self, name, nn.Sequential(*[CRB(c, chunk_size, n_hashes)
                                                for _ in range(n_blocks)]))
        self.down1 = Resample(nf, nf // 2, up=False)
        self.down2 = Resample(2 * nf, nf, up=False)
        self.up1 = Resample(4 * nf, 8 * nf, up=True)
        self.conv1x1_1 = nn.Conv2d(4 * nf, 2 * nf, 1)
        self.up2 = Resample(2 * nf, 4 * nf, up=True)
        self.fusion = nn.Conv2d(2 * nf, nf, 3, padding=1)
        if scale == 4:
            self.upscale = nn.Sequential(
                nn.Conv2d(nf, 4 * nf, 3, padding=1), nn.PixelShuffle(2),
                nn.Conv2d(nf, 4 * nf, 3, padding=1), nn.PixelShuffle(2),
                nn.Conv2d(nf, 3, 3, padding=1))
        else:
            self.upscale = nn.Sequential(
                nn.Conv2d(nf, nf * scale ** 2, 3, padding=1), nn.PixelShuffle(scale),
                nn.Conv2d(nf, 3, 3, padding=1))

    def forward(self, lr):
        h, w = lr.shape[-2:]
        lr_bic = F.interpolate(lr, size=(h * self.scale, w * self.scale), mode="bicubic",
                               align_corners=False).clamp(0, 1)
        e1 = self.encoder_block1(self.head(lr))
        e2 = self.encoder_block2(self.down1(e1))
        z = self.latent_block(self.down2(e2))
        y = self.decoder_block1(self.conv1x1_1(torch.cat([e2, self.up1(z)], dim=1)))
        y = self.decoder_block2(torch.cat([e1, self.up2(y)], dim=1))
        y = self.fusion(self.refine_block(y))
        return self.upscale(y) + lr_bic


class NLCUnet(nn.Module):
    """Wrapper so that keys start with `Restorer.` as in the authors' checkpoints."""

    def __init__(self, nf=64, scale=4, blocks=BLOCKS, chunk_size=144, n_hashes=4):
        super().__init__()
        self.Restorer = Restorer(nf, scale, blocks, chunk_size, n_hashes)

    def forward(self, lr):
        return self.Restorer(lr)

    def attention_modules(self):
        """(dotted name, NLSA) pairs (registration order), for rotation injection."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, NLSA)]
