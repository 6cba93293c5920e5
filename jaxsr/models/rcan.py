"""RCAN (Zhang et al., ECCV 2018): 10 residual groups x 20 channel-attention blocks, 64 ch.

    head_0                conv3 3->C
    body_<g> (g < G)      ResidualGroup: body_<j> (j < B) RCAB, body_<B> conv3, + input
        RCAB              body_0 conv3, ReLU, body_2 conv3, body_3 CALayer, + input
        CALayer           global average pool -> conv_du_0 1x1 C->C/r -> ReLU ->
                          conv_du_2 1x1 C/r->C -> sigmoid, times the input
    body_<G>              conv3 (long skip: + head output)
    tail_0, tail_1        EDSR upsampler and conv3 C->3

Names mirror the official PyTorch RCAN (`model/rcan.py` of RCAN / EDSR-PyTorch): torch key
`body.3.body.7.body.3.conv_du.2.weight` is `body_3/body_7/body_3/conv_du_2/kernel`. The
MeanShift convs are constants here, as in `jaxsr.models.edsr` (frozen in torch). The official
code trains with rgb_range 255; this project uses [0, 1] (rgb_range 1), which only rescales
the mean shift. Parameters: 15,444,643 at x2 and 15,592,355 at x4, i.e. the official counts
(15,444,667 / 15,592,379, the paper's "15.4M"/"15.6M") minus the 24 frozen MeanShift values.

GLA plug-in (`config.model.attention='gla'`, `jaxsr.models.plugin`): position p puts a GLA
(block `gla_<p>`) after the first p residual groups (0..G; default G // 2).

scan_blocks (`jaxsr.models.scan`): the residual groups run as one scan `scan_body`, the
RCABs of each as a nested scan `scan_body/block/scan_body` (plain RCAN; with GLA plug-ins
the groups stay unrolled, their RCABs scanned).
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxsr.models import common, plugin, scan


class CALayer(nn.Module):
    reduction: int = 16

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = jnp.mean(x, axis=(1, 2), keepdims=True)
        y = nn.relu(common.conv(c // self.reduction, 1, name="conv_du_0")(y))
        y = nn.sigmoid(common.conv(c, 1, name="conv_du_2")(y))
        return x * y


class RCAB(nn.Module):
    """Residual channel-attention block (the official code ignores res_scale: 1)."""
    n_feats: int
    reduction: int = 16

    @nn.compact
    def __call__(self, x):
        y = nn.relu(common.conv(self.n_feats, name="body_0")(x))
        y = common.conv(self.n_feats, name="body_2")(y)
        return CALayer(self.reduction, name="body_3")(y) + x


class ResidualGroup(nn.Module):
    n_feats: int
    n_resblocks: int = 20
    reduction: int = 16
    scan_blocks: bool = False      # the RCABs as a scan `scan_body`

    @nn.compact
    def __call__(self, x):
        y = x
        if self.scan_blocks:
            y = scan.scan_blocks(RCAB, self.n_resblocks, y, name="scan_body",
                                 kwargs=dict(n_feats=self.n_feats, reduction=self.reduction))
        for j in range(0 if self.scan_blocks else self.n_resblocks):
            y = RCAB(self.n_feats, self.reduction, name=f"body_{j}")(y)
        return common.conv(self.n_feats, name=f"body_{self.n_resblocks}")(y) + x


class RCAN(scan.LayoutMixin, nn.Module):
    scale: int
    n_resgroups: int = 10
    n_resblocks: int = 20
    n_feats: int = 64
    reduction: int = 16
    gla: Optional[plugin.GLASpec] = None
    scan_blocks: bool = False
    remat: str = "none"            # config.train.remat (scan.REMAT_CHOICES)

    def _group_kwargs(self) -> dict:
        return dict(n_feats=self.n_feats, n_resblocks=self.n_resblocks,
                    reduction=self.reduction, scan_blocks=self.scan_blocks)

    @nn.compact
    def __call__(self, x, train: bool = False):
        plugin.check_positions(self.gla, self.n_resgroups, "RCAN (0..n_resgroups)")

        def body(res):
            if self.scan_blocks and self.gla is None:
                return scan.scan_blocks(ResidualGroup, self.n_resgroups, res, name="scan_body",
                                        kwargs=self._group_kwargs(), remat=self.remat)
            group = scan.maybe_remat(ResidualGroup, self.remat)
            res = plugin.maybe_gla(self.gla, 0, res, train)
            for g in range(self.n_resgroups):
                res = group(**self._group_kwargs(), name=f"body_{g}")(res)
                res = plugin.maybe_gla(self.gla, g + 1, res, train)
            return res

        return common.edsr_frame(x, body, scale=self.scale, n_feats=self.n_feats,
                                 n_body=self.n_resgroups)

    def param_stacks(self) -> tuple:
        """The stacks of the scanned layout (whichever layout this model uses)."""
        g, b = self.n_resgroups, self.n_resblocks
        if self.gla is not None:        # unrolled groups, RCABs scanned inside each
            return tuple(scan.Stack((f"body_{i}", "scan_body", "block"),
                                    tuple((f"body_{i}", f"body_{j}") for j in range(b)), (b,))
                         for i in range(g))
        inner = ("scan_body", "block", "scan_body", "block")
        return (scan.Stack(inner, tuple((f"body_{i}", f"body_{j}") for i in range(g)
                                        for j in range(b)), (g, b)),
                scan.Stack(("scan_body", "block", f"body_{b}"),
                           tuple((f"body_{i}", f"body_{b}") for i in range(g)), (g,)))


def build(config):
    m = config.model
    return RCAN(scale=config.scale, n_resgroups=m.n_resgroups, n_resblocks=m.n_resblocks,
                n_feats=m.n_feats, reduction=m.get("reduction", 16),
                gla=plugin.spec_from_config(m, default_positions=(m.n_resgroups // 2,)),
                scan_blocks=scan.scan_enabled(m), remat=scan.remat_from_config(config))
