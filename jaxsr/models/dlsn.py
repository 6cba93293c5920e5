"""DLSN (Su, Gan, Chen, Yin, Chen, TPAMI 2022): Global Learnable Attention network.

Body: n_resgroups GLAFFMs `body_<i>`, each = n_resblocks LFFBs `body_<j>` (conv3, ReLU,
conv3, + input; the official LFFB ignores res_scale, so 1), a GLA `body_<n_resblocks>`
(res_scale 1), a conv3 `body_<n_resblocks+1>`, the whole GLAFFM scaled by res_scale (0.1)
plus its input; then the final conv3 `body_<n_resgroups>`, global skip, EDSR tail.

Parameters: the official count minus the 24 frozen MeanShift values and the unused
scalar `a` (first key of the torch state_dict; the converter drops it): 69,842,563 at x2
for 256 features, 18,268,739 at x4 for 128 (the paper's 18.27M).
The GLA `fc` layers have chunk_size outputs, so a checkpoint fixes chunk_size; n_hashes
may be changed at evaluation time.
"""
import flax.linen as nn

from jaxsr.attention import GlobalLearnableAttention
from jaxsr.models import common


class GLAFFM(nn.Module):
    n_feats: int
    n_resblocks: int = 4
    res_scale: float = 0.1
    chunk_size: int = 128
    n_hashes: int = 3
    reduction: int = 4
    attention_impl: str = "auto"   # lsh.ATTENTION_IMPLS

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = x
        for j in range(self.n_resblocks):
            y = common.ResBlock(self.n_feats, 1.0, name=f"body_{j}")(y)
        y = GlobalLearnableAttention(chunk_size=self.chunk_size, n_hashes=self.n_hashes,
                                     reduction=self.reduction, res_scale=1.0,
                                     attention_impl=self.attention_impl,
                                     name=f"body_{self.n_resblocks}")(y, train=train)
        y = common.conv(self.n_feats, name=f"body_{self.n_resblocks + 1}")(y)
        return y * self.res_scale + x


class DLSN(nn.Module):
    scale: int
    n_resgroups: int = 10
    n_resblocks: int = 4
    n_feats: int = 256
    res_scale: float = 0.1
    chunk_size: int = 128
    n_hashes: int = 3
    reduction: int = 4
    attention_impl: str = "auto"   # lsh.ATTENTION_IMPLS

    @nn.compact
    def __call__(self, x, train: bool = False):
        def body(res):
            for i in range(self.n_resgroups):
                res = GLAFFM(self.n_feats, self.n_resblocks, self.res_scale, self.chunk_size,
                             self.n_hashes, self.reduction, self.attention_impl,
                             name=f"body_{i}")(res, train=train)
            return res

        return common.edsr_frame(x, body, scale=self.scale, n_feats=self.n_feats,
                                 n_body=self.n_resgroups)


def build(config):
    m = config.model
    return DLSN(scale=config.scale, n_resgroups=m.n_resgroups, n_resblocks=m.n_resblocks,
                n_feats=m.n_feats, res_scale=m.res_scale, chunk_size=m.chunk_size,
                n_hashes=m.n_hashes, reduction=m.get("reduction", 4),
                attention_impl=m.get("attention_impl", "auto"))
