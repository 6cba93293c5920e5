"""NLSN (Mei, Fan, Zhou, CVPR 2021): EDSR-large with Non-Local Sparse Attention.

Body (torch `nn.Sequential` indices = Flax names `body_<i>`): an NLSA first, then
n_resblocks ResBlocks with an NLSA after every 8th, then a conv3. With the paper's 32
blocks: NLSA at body_0/9/18/27/36, final conv body_37. Both the ResBlocks and the NLSAs use
res_scale (0.1). MeanShift is a constant here (frozen in torch: its 24 values are not
parameters), so the parameter count is the official one minus 24 (41,796,163 at x2).

chunk_size and n_hashes carry no parameters: `--config.model.n_hashes=1` at evaluation
is valid. Rotations: see `jaxsr.attention.modules` (the 'lsh' RNG stream in training, a
fixed per-layer key otherwise).
"""
import flax.linen as nn

from jaxsr.attention import NonLocalSparseAttention
from jaxsr.models import common


class NLSN(nn.Module):
    scale: int
    n_resblocks: int = 32
    n_feats: int = 256
    res_scale: float = 0.1
    chunk_size: int = 144
    n_hashes: int = 4
    reduction: int = 4
    attn_every: int = 8
    attention_impl: str = "auto"   # lsh.ATTENTION_IMPLS

    def _nlsa(self, index: int) -> NonLocalSparseAttention:
        return NonLocalSparseAttention(chunk_size=self.chunk_size, n_hashes=self.n_hashes,
                                       reduction=self.reduction, res_scale=self.res_scale,
                                       attention_impl=self.attention_impl,
                                       name=f"body_{index}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        n_attn = self.n_resblocks // self.attn_every

        def body(res):
            idx = 0
            res = self._nlsa(idx)(res, train=train)
            for i in range(self.n_resblocks):
                idx += 1
                res = common.ResBlock(self.n_feats, self.res_scale, name=f"body_{idx}")(res)
                if (i + 1) % self.attn_every == 0:
                    idx += 1
                    res = self._nlsa(idx)(res, train=train)
            return res

        return common.edsr_frame(x, body, scale=self.scale, n_feats=self.n_feats,
                                 n_body=self.n_resblocks + n_attn + 1)


def build(config):
    m = config.model
    return NLSN(scale=config.scale, n_resblocks=m.n_resblocks, n_feats=m.n_feats,
                res_scale=m.res_scale, chunk_size=m.chunk_size, n_hashes=m.n_hashes,
                reduction=m.get("reduction", 4), attn_every=m.get("attn_every", 8),
                attention_impl=m.get("attention_impl", "auto"))
