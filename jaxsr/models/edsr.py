"""EDSR (Lim et al. 2017), as in EDSR-PyTorch: the baseline (16 blocks, 64 features,
res_scale 1) and the large model (32 blocks, 256 features, res_scale 0.1).

Input and output are NHWC RGB in [0, 1] (rgb_range 1); the MeanShift convs of the torch model
are constants here (they are frozen there) and are written back by the converter.

GLA plug-in (DLSN 4.3.3): `config.model.attention='gla'` adds a GLA block `gla_<p>` after
the first p ResBlocks for each p in `config.model.attention_positions` (0..n_resblocks;
default n_resblocks // 2); see `jaxsr.models.plugin`. 'none' (default) is plain EDSR.

scan_blocks (`jaxsr.models.scan`): the ResBlocks run as one scan `scan_body` (plain EDSR;
with GLA plug-ins the blocks stay unrolled).
"""
from typing import Optional

import flax.linen as nn

from jaxsr.models import common, plugin, scan


class EDSR(scan.LayoutMixin, nn.Module):
    scale: int
    n_resblocks: int = 16
    n_feats: int = 64
    res_scale: float = 1.0
    gla: Optional[plugin.GLASpec] = None
    scan_blocks: bool = False      # ignored (unrolled) with GLA plug-ins
    remat: str = "none"            # config.train.remat (scan.REMAT_CHOICES)

    def _scanned(self) -> bool:
        return self.scan_blocks and self.gla is None

    @nn.compact
    def __call__(self, x, train: bool = False):
        plugin.check_positions(self.gla, self.n_resblocks, "EDSR (0..n_resblocks)")

        def body(res):
            if self._scanned():
                return scan.scan_blocks(common.ResBlock, self.n_resblocks, res,
                                        name="scan_body", remat=self.remat,
                                        kwargs=dict(features=self.n_feats,
                                                    res_scale=self.res_scale))
            resblock = scan.maybe_remat(common.ResBlock, self.remat)
            res = plugin.maybe_gla(self.gla, 0, res, train)
            for i in range(self.n_resblocks):
                res = resblock(self.n_feats, self.res_scale, name=f"body_{i}")(res)
                res = plugin.maybe_gla(self.gla, i + 1, res, train)
            return res

        return common.edsr_frame(x, body, scale=self.scale, n_feats=self.n_feats,
                                 n_body=self.n_resblocks)

    def param_stacks(self) -> tuple:
        """The stacks of the scanned layout (whichever layout this model uses)."""
        if self.gla is not None:
            return ()
        return (scan.Stack(("scan_body", "block"),
                           tuple((f"body_{i}",) for i in range(self.n_resblocks)),
                           (self.n_resblocks,)),)


def build(config):
    m = config.model
    return EDSR(scale=config.scale, n_resblocks=m.n_resblocks, n_feats=m.n_feats,
                res_scale=m.res_scale,
                gla=plugin.spec_from_config(m, default_positions=(m.n_resblocks // 2,)),
                scan_blocks=scan.scan_enabled(m), remat=scan.remat_from_config(config))
