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

scan_blocks (`jaxsr.models.scan`): the GLAFFMs run as one scan `scan_body`, the LFFBs of
each as a nested scan `scan_body/block/scan_body`, so the program holds one GLA instead of
n_resgroups; the evaluation rotations of GLAFFM i are those of its unrolled GLA
`body_<i>/body_<n_resblocks>`, passed into the scan.
"""
import flax.linen as nn

from jaxsr.attention import GlobalLearnableAttention, lsh
from jaxsr.models import common, scan


class GLAFFM(nn.Module):
    n_feats: int
    n_resblocks: int = 4
    res_scale: float = 0.1
    chunk_size: int = 128
    n_hashes: int = 3
    reduction: int = 4
    attention_impl: str = "auto"   # lsh.ATTENTION_IMPLS
    scan_blocks: bool = False      # the LFFBs as a scan `scan_body`

    @nn.compact
    def __call__(self, x, train: bool = False, rotations=None):
        y = x
        if self.scan_blocks:
            y = scan.scan_blocks(common.ResBlock, self.n_resblocks, y, name="scan_body",
                                 kwargs=dict(features=self.n_feats, res_scale=1.0))
        else:
            for j in range(self.n_resblocks):
                y = common.ResBlock(self.n_feats, 1.0, name=f"body_{j}")(y)
        y = GlobalLearnableAttention(chunk_size=self.chunk_size, n_hashes=self.n_hashes,
                                     reduction=self.reduction, res_scale=1.0,
                                     attention_impl=self.attention_impl,
                                     name=f"body_{self.n_resblocks}")(
                                         y, train=train, rotations=rotations)
        y = common.conv(self.n_feats, name=f"body_{self.n_resblocks + 1}")(y)
        return y * self.res_scale + x


class DLSN(scan.LayoutMixin, nn.Module):
    scale: int
    n_resgroups: int = 10
    n_resblocks: int = 4
    n_feats: int = 256
    res_scale: float = 0.1
    chunk_size: int = 128
    n_hashes: int = 3
    reduction: int = 4
    attention_impl: str = "auto"   # lsh.ATTENTION_IMPLS
    scan_blocks: bool = False
    remat: str = "none"            # config.train.remat (scan.REMAT_CHOICES)

    def _group_kwargs(self) -> dict:
        return dict(n_feats=self.n_feats, n_resblocks=self.n_resblocks,
                    res_scale=self.res_scale, chunk_size=self.chunk_size,
                    n_hashes=self.n_hashes, reduction=self.reduction,
                    attention_impl=self.attention_impl, scan_blocks=self.scan_blocks)

    @nn.compact
    def __call__(self, x, train: bool = False):
        body = self._scanned_body if self.scan_blocks else self._unrolled_body
        return common.edsr_frame(x, lambda res: body(res, train), scale=self.scale,
                                 n_feats=self.n_feats, n_body=self.n_resgroups)

    def _unrolled_body(self, res, train):
        group = scan.maybe_remat(GLAFFM, self.remat, static_argnums=(2,))
        for i in range(self.n_resgroups):
            res = group(**self._group_kwargs(), name=f"body_{i}")(res, train)
        return res

    def _scanned_body(self, res, train):
        return scan.scan_blocks(GLAFFM, self.n_resgroups, res, name="scan_body",
                                kwargs=self._group_kwargs(), call_kwargs=dict(train=train),
                                rotations=self._gla_rotations(res), pass_rotations=True,
                                remat=self.remat)

    def _gla_rotations(self, x):
        """The unrolled GLAs' evaluation rotations (None: the scan draws or reads them)."""
        if not scan.wants_fixed_rotations(self):
            return None
        _, h, w, c = x.shape
        paths = [f"body_{i}/body_{self.n_resblocks}" for i in range(self.n_resgroups)]
        return scan.fixed_rotation_stack(paths, lsh.SUPERBIT, c // self.reduction,
                                         self.n_hashes, lsh.num_buckets(h * w, self.chunk_size))

    def param_stacks(self) -> tuple:
        """The stacks of the scanned layout (whichever layout this model uses)."""
        g, b = self.n_resgroups, self.n_resblocks
        inner = ("scan_body", "block", "scan_body", "block")
        return (scan.Stack(inner, tuple((f"body_{i}", f"body_{j}") for i in range(g)
                                        for j in range(b)), (g, b)),) + tuple(
            scan.Stack(("scan_body", "block", f"body_{k}"),
                       tuple((f"body_{i}", f"body_{k}") for i in range(g)), (g,))
            for k in (b, b + 1))


def build(config):
    m = config.model
    return DLSN(scale=config.scale, n_resgroups=m.n_resgroups, n_resblocks=m.n_resblocks,
                n_feats=m.n_feats, res_scale=m.res_scale, chunk_size=m.chunk_size,
                n_hashes=m.n_hashes, reduction=m.get("reduction", 4),
                attention_impl=m.get("attention_impl", "auto"),
                scan_blocks=scan.scan_enabled(m), remat=scan.remat_from_config(config))
