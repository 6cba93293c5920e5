"""NLSN (spec 2.2): EDSR with an NLSA before the first ResBlock and after every 8th."""
from torch import nn

from . import common
from .lsh import NonLocalSparseAttention


class NLSN(nn.Module):
    """attn_every: ResBlocks between NLSAs (official 8; smaller = a cheaper test net)."""

    def __init__(self, scale, n_resblocks=32, n_feats=256, res_scale=0.1, chunk_size=144,
                 n_hashes=4, rgb_range=1.0, attn_every=8):
        super().__init__()
        conv = common.default_conv

        def nlsa():  # the NLSA residual is scaled by res_scale too
            return NonLocalSparseAttention(n_hashes=n_hashes, channels=n_feats,
                                           chunk_size=chunk_size, res_scale=res_scale)

        self.sub_mean = common.MeanShift(rgb_range, sign=-1)
        self.add_mean = common.MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(conv(3, n_feats, 3))
        body = [nlsa()]
        for i in range(n_resblocks):
            body.append(common.ResBlock(conv, n_feats, 3, res_scale))
            if (i + 1) % attn_every == 0:
                body.append(nlsa())
        body.append(conv(n_feats, n_feats, 3))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(common.Upsampler(conv, scale, n_feats), conv(n_feats, 3, 3))

    def attention_layers(self):
        return [m for m in self.body if isinstance(m, NonLocalSparseAttention)]

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))
