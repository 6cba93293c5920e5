"""LNLN: lightweight non-local network for SR (Wang, Lei, Zhou, Wang, Meng, Nandi, ICASSP 2021).

No public code exists (architectures.md section 8); this is built from the paper
(/work/shared/papers/lnln-icassp2021.txt) on top of DRCA (Jang & Park, CVPRW 2019), which
LNLN modifies:

    x  -> mean shift -> DSC 3x3 (shallow features F0) -> region non-local (2x2 grid)
       -> 5 lightweight residual groups (LRG) with DRCA's dense connections
       -> 1x1 projection of all group outputs, + F0 (long skip)
       -> region non-local (2x2 grid) -> upsampler (DSC conv + PixelShuffle) -> conv 3x3
       -> mean shift back.

LRG = n DSC residual channel-attention blocks (RCAB with both 3x3 convs replaced by a
depthwise 3x3 + pointwise 1x1) + a DSC conv, with a group skip. DSC = "depthwise
separable convolution", depthwise then pointwise, each with bias, nothing in between.

Choices the paper leaves open, and why:
* Width 64 and channel-attention reduction 16: RCAN's and DRCA's settings (LNLN's
  "2.04M vs DRCA 14.2M" and "LRG is 14.12% of DRCA's group" only fit 64-wide blocks).
* Five groups: "DRCA is mainly composed of five residual blocks" (groups).
* Blocks per group: 37. Neither paper gives it here; it is solved from the paper's own
  numbers, LRG = 0.38M and total 2.04M, given the other choices: 37 blocks give an LRG of
  381,460 and 2,038,725 parameters at x4 (within 0.1% of 2.04M; 36 blocks give 1.99M).
* Dense connections (DRCA: concatenation between residual groups, not between convs):
  group g >= 2 takes a 1x1 conv of concat(F0, out_1 .. out_{g-1}); the final 1x1
  projection takes concat(out_1 .. out_5); the long skip adds F0.
* The non-local module is the embedded-Gaussian block the paper cites and writes out
  (Wang et al. 2018; eq. 1-3): theta/phi/g 1x1 convs to C/2 channels, softmax of
  theta^T phi with no temperature, W 1x1 back to C, plus the input. W starts at zero
  (Wang et al.'s init without BN), so each block starts as the identity. It runs
  separately on each cell of a 2x2 grid (SAN's region-level non-local, the paper's [12]):
  rows split at H//2, columns at W//2, so odd sizes work. Not `jaxsr.attention.
  NonLocalAttention` (NLSN's form: PReLU embeddings, no W, no residual).
* "Only add non-local blocks in low-level and high-level feature spaces": one after the
  shallow DSC and one after the long skip, before the upsampler (the paper's stage 3).
* Upsampler: EDSR/RCAN layout (x2/x3 one conv + PixelShuffle, x4 two of them) with DSC
  convs (vanilla 3x3 convs alone would be 0.30M at x4, so 5 LRGs of 0.38M could not
  total 2.04M); the last conv (64 -> 3) is a plain 3x3 conv.
* ReLU inside the blocks (the paper), no batch norm, MeanShift with the DIV2K mean
  (RCAN/DRCA code base), res_scale 1.

Parameter counts (default widths): x2 2,021,445; x3 2,042,245; x4 2,038,725.
"""
import flax.linen as nn
import jax.numpy as jnp

from jaxsr.attention.dense import dense_attention
from jaxsr.models import common
from jaxsr.models import init as init_lib

HAS_PARAMS = True
# config.model.init='torch' (jaxsr.models.init): torch defaults everywhere but the non-local
# output convs W, which start at zero (Wang et al.'s non-local block; no official code).
INIT_RULES = ((r"(^|/)W$", init_lib.keep),)


class DSConv(nn.Module):
    """Depthwise k x k (groups = C_in) then pointwise 1x1 to `features`; torch dw / pw."""
    features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        x = common.conv(x.shape[-1], self.kernel_size, groups=x.shape[-1], name="dw")(x)
        return common.conv(self.features, 1, name="pw")(x)


class ChannelAttention(nn.Module):
    """RCAN CALayer: GAP -> 1x1 (C/r) -> ReLU -> 1x1 (C) -> sigmoid, rescales x."""
    reduction: int = 16

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = jnp.mean(x, axis=(1, 2), keepdims=True)
        y = nn.relu(common.conv(max(c // self.reduction, 1), 1, name="conv_du_0")(y))
        y = nn.sigmoid(common.conv(c, 1, name="conv_du_2")(y))
        return x * y


class DSRCAB(nn.Module):
    """RCAB with DSC convs: x + CA(DSC(ReLU(DSC(x)))) (torch body.0, body.2, body.3)."""
    features: int
    reduction: int = 16

    @nn.compact
    def __call__(self, x):
        y = nn.relu(DSConv(self.features, name="body_0")(x))
        y = DSConv(self.features, name="body_2")(y)
        return x + ChannelAttention(self.reduction, name="body_3")(y)


class LRG(nn.Module):
    """Lightweight residual group: n DSRCABs and a DSC conv, plus the group input."""
    features: int
    n_blocks: int
    reduction: int = 16

    @nn.compact
    def __call__(self, x):
        y = x
        for i in range(self.n_blocks):
            y = DSRCAB(self.features, self.reduction, name=f"body_{i}")(y)
        return x + DSConv(self.features, name=f"body_{self.n_blocks}")(y)


def _attend(theta, phi, g):
    """Embedded-Gaussian non-local on [N, h, w, *]: softmax_j(theta_i . phi_j) g_j."""
    n, h, w, _ = theta.shape
    flat = lambda t: t.reshape(n, h * w, t.shape[-1])
    # dense_attention: scores and softmax in float32 also when x is bfloat16
    y = dense_attention(flat(theta), flat(phi), flat(g))
    return y.reshape(n, h, w, -1)


class RegionNonLocal(nn.Module):
    """Non-local block applied independently to each cell of a 2x2 grid (shared weights)."""
    reduction: int = 2
    grid: int = 2

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        inter = max(c // self.reduction, 1)
        theta = common.conv(inter, 1, name="theta")
        phi = common.conv(inter, 1, name="phi")
        g = common.conv(inter, 1, name="g")
        w_out = nn.Conv(c, (1, 1), kernel_init=nn.initializers.zeros, name="W")
        h, w = x.shape[1:3]
        hs = [0] + [h * i // self.grid for i in range(1, self.grid)] + [h]
        ws = [0] + [w * i // self.grid for i in range(1, self.grid)] + [w]
        # The 1x1 embeddings are per pixel, so they run once before the grid cut; the same
        # numbers as embedding each cell, but libtpu 0.0.42 aborts compiling the backward
        # of 1x1 convs on the cells (space_to_batch_converter.cc:541; docs/performance.md).
        emb = (theta(x), phi(x), g(x))
        rows = []
        for r in range(self.grid):
            cells = [_attend(*(t[:, hs[r]:hs[r + 1], ws[q]:ws[q + 1]] for t in emb))
                     for q in range(self.grid)]
            rows.append(jnp.concatenate(cells, axis=2))
        return x + w_out(jnp.concatenate(rows, axis=1))


class Upsampler(nn.Module):
    """conv + PixelShuffle with DSC convs: x2/x3 one stage, x4 two x2 stages (layers_0, 2)."""
    scale: int
    features: int

    @nn.compact
    def __call__(self, x):
        if self.scale in (2, 3):
            return common.pixel_shuffle(DSConv(self.features * self.scale ** 2,
                                               name="layers_0")(x), self.scale)
        if self.scale == 4:
            for i in range(2):
                x = common.pixel_shuffle(DSConv(self.features * 4, name=f"layers_{2 * i}")(x), 2)
            return x
        raise ValueError(f"LNLN supports scale 2, 3 or 4, got {self.scale}")


class LNLN(nn.Module):
    scale: int
    n_feats: int = 64
    n_groups: int = 5
    n_blocks: int = 37
    reduction: int = 16
    nl_reduction: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = common.mean_shift(x, -1.0)
        f0 = DSConv(self.n_feats, name="head")(x)
        f0 = RegionNonLocal(self.nl_reduction, name="nl_head")(f0)
        feats, outs = [f0], []
        for gi in range(self.n_groups):
            inp = f0 if gi == 0 else common.conv(self.n_feats, 1, name=f"fuse_{gi}")(
                jnp.concatenate(feats, axis=-1))
            out = LRG(self.n_feats, self.n_blocks, self.reduction, name=f"body_{gi}")(inp)
            feats.append(out)
            outs.append(out)
        y = common.conv(self.n_feats, 1, name="project")(jnp.concatenate(outs, axis=-1)) + f0
        y = RegionNonLocal(self.nl_reduction, name="nl_tail")(y)
        y = Upsampler(self.scale, self.n_feats, name="tail_0")(y)
        y = common.conv(3, 3, name="tail_1")(y)
        return common.mean_shift(y, 1.0)


def build(config):
    m = config.model
    return LNLN(scale=config.scale, n_feats=m.get("n_feats", 64), n_groups=m.get("n_groups", 5),
                n_blocks=m.get("n_blocks", 37), reduction=m.get("reduction", 16),
                nl_reduction=m.get("nl_reduction", 2))


def min_input_size(config) -> int:
    del config
    return 2       # every 2x2 grid cell must hold at least one pixel
