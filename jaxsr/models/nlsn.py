"""NLSN (Mei, Fan, Zhou, CVPR 2021): EDSR-large with Non-Local Sparse Attention.

Body (torch `nn.Sequential` indices = Flax names `body_<i>`): an NLSA first, then
n_resblocks ResBlocks with an NLSA after every 8th, then a conv3. With the paper's 32
blocks: NLSA at body_0/9/18/27/36, final conv body_37. Both the ResBlocks and the NLSAs use
res_scale (0.1). MeanShift is a constant here (frozen in torch: its 24 values are not
parameters), so the parameter count is the official one minus 24 (41,796,163 at x2).

chunk_size and n_hashes carry no parameters: `--config.model.n_hashes=1` at evaluation
is valid. Rotations: see `jaxsr.attention.modules` (the 'lsh' RNG stream in training, a
fixed per-layer key otherwise).

scan_blocks (`jaxsr.models.scan`): the repeated segment [attn_every ResBlocks + NLSA] runs
as one scan `scan_body` (the ResBlocks inside as a nested scan), so the program holds two
NLSAs (body_0 and the segment's) instead of five; ResBlocks left after the last segment
are the scan `scan_tail`. The evaluation rotations of each segment's NLSA are those of its
unrolled name (body_9, body_18, ...), passed into the scan.
"""
import flax.linen as nn

from jaxsr.attention import NonLocalSparseAttention, lsh
from jaxsr.models import common, scan


class NLSNSegment(nn.Module):
    """attn_every ResBlocks (a nested scan) then an NLSA: one iteration of `scan_body`."""
    n_feats: int
    res_scale: float
    n_res: int
    nlsa: tuple             # NonLocalSparseAttention keyword arguments

    @nn.compact
    def __call__(self, x, rotations=None):
        x = scan.scan_blocks(common.ResBlock, self.n_res, x, name="resblocks",
                             kwargs=dict(features=self.n_feats, res_scale=self.res_scale))
        return NonLocalSparseAttention(**dict(self.nlsa), name="nlsa")(x, rotations=rotations)


class NLSN(scan.LayoutMixin, nn.Module):
    scale: int
    n_resblocks: int = 32
    n_feats: int = 256
    res_scale: float = 0.1
    chunk_size: int = 144
    n_hashes: int = 4
    reduction: int = 4
    attn_every: int = 8
    attention_impl: str = "auto"   # lsh.ATTENTION_IMPLS
    scan_blocks: bool = False
    remat: str = "none"            # config.train.remat (scan.REMAT_CHOICES)

    def _nlsa_kwargs(self) -> dict:
        return dict(chunk_size=self.chunk_size, n_hashes=self.n_hashes,
                    reduction=self.reduction, res_scale=self.res_scale,
                    attention_impl=self.attention_impl)

    def _nlsa(self, index: int):
        return scan.maybe_remat(NonLocalSparseAttention, self.remat)(
            **self._nlsa_kwargs(), name=f"body_{index}")

    def _counts(self):
        """(segments, ResBlocks after the last one)."""
        return divmod(self.n_resblocks, self.attn_every)

    def _attention_index(self, segment: int) -> int:
        return (segment + 1) * (self.attn_every + 1)

    @nn.compact
    def __call__(self, x, train: bool = False):
        n_attn = self.n_resblocks // self.attn_every
        body = self._scanned_body if self.scan_blocks else self._unrolled_body
        return common.edsr_frame(x, body, scale=self.scale, n_feats=self.n_feats,
                                 n_body=self.n_resblocks + n_attn + 1)

    def _unrolled_body(self, res):
        resblock = scan.maybe_remat(common.ResBlock, self.remat)
        idx = 0
        res = self._nlsa(idx)(res)
        for i in range(self.n_resblocks):
            idx += 1
            res = resblock(self.n_feats, self.res_scale, name=f"body_{idx}")(res)
            if (i + 1) % self.attn_every == 0:
                idx += 1
                res = self._nlsa(idx)(res)
        return res

    def _scanned_body(self, res):
        n_seg, n_tail = self._counts()
        res = self._nlsa(0)(res)
        if n_seg:
            res = scan.scan_blocks(
                NLSNSegment, n_seg, res, name="scan_body", remat=self.remat,
                kwargs=dict(n_feats=self.n_feats, res_scale=self.res_scale,
                            n_res=self.attn_every,
                            nlsa=tuple(sorted(self._nlsa_kwargs().items()))),
                rotations=self._segment_rotations(res, n_seg), pass_rotations=True)
        if n_tail:
            res = scan.scan_blocks(common.ResBlock, n_tail, res, name="scan_tail",
                                   kwargs=dict(features=self.n_feats, res_scale=self.res_scale),
                                   remat=self.remat)
        return res

    def _segment_rotations(self, x, n_seg):
        """The unrolled NLSAs' evaluation rotations (None: the scan draws or reads them)."""
        if not scan.wants_fixed_rotations(self):
            return None
        _, h, w, c = x.shape
        paths = [f"body_{self._attention_index(k)}" for k in range(n_seg)]
        return scan.fixed_rotation_stack(paths, lsh.CROSS_POLYTOPE, c // self.reduction,
                                         self.n_hashes, lsh.num_buckets(h * w, self.chunk_size))

    def param_stacks(self) -> tuple:
        """The stacks of the scanned layout (whichever layout this model uses)."""
        n_seg, n_tail = self._counts()
        a, stacks = self.attn_every, []
        if n_seg:
            stacks.append(scan.Stack(
                ("scan_body", "block", "resblocks", "block"),
                tuple((f"body_{k * (a + 1) + 1 + j}",) for k in range(n_seg) for j in range(a)),
                (n_seg, a)))
            stacks.append(scan.Stack(("scan_body", "block", "nlsa"),
                                     tuple((f"body_{self._attention_index(k)}",)
                                           for k in range(n_seg)), (n_seg,)))
        if n_tail:
            stacks.append(scan.Stack(("scan_tail", "block"),
                                     tuple((f"body_{n_seg * (a + 1) + 1 + j}",)
                                           for j in range(n_tail)), (n_tail,)))
        return tuple(stacks)


def build(config):
    m = config.model
    return NLSN(scale=config.scale, n_resblocks=m.n_resblocks, n_feats=m.n_feats,
                res_scale=m.res_scale, chunk_size=m.chunk_size, n_hashes=m.n_hashes,
                reduction=m.get("reduction", 4), attn_every=m.get("attn_every", 8),
                attention_impl=m.get("attention_impl", "auto"),
                scan_blocks=scan.scan_enabled(m), remat=scan.remat_from_config(config))
