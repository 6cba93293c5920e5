"""NLCUnet (Feng, Wang, Xing, ICME 2023): a U-Net of NLC blocks with a bicubic skip.

Exact port of `NLCUnet_arch_best.py` (GZHU-DVL/NLCUnet @ 7255603), the model behind the
paper's numbers (18,113,619 parameters at x4, nf 64). LR in [0, 1] in, SR out (not
clamped); no mean shift.

    lr_bic = clamp(bicubic(lr, x scale), 0, 1)          # Keys a=-0.75, edge clamp (torch)
    head conv3 3->nf
    encoder_block1 6 x NLC(nf)      -> down1 conv3 nf->nf/2 (no bias) + PixelUnshuffle(2)
    encoder_block2 8 x NLC(2nf)     -> down2 conv3 2nf->nf (no bias) + PixelUnshuffle(2)
    latent_block  10 x NLC(4nf)     -> up1 conv3 4nf->8nf (no bias) + PixelShuffle(2)
    conv1x1_1 on cat(e2, u1) 4nf->2nf, decoder_block1 6 x NLC(2nf)
    up2 conv3 2nf->4nf (no bias) + PixelShuffle(2); decoder_block2 8 x NLC(2nf) on cat(e1, u2)
    refine_block 8 x NLC(2nf); fusion conv3 2nf->nf; upscale (x4: conv, PS2, conv, PS2, conv)
    sr = upscale + lr_bic

NLC block ("CRB_Layer"): t = LN1(x); a = NLSA(t) (res_scale 1, so a = attn + t);
b = dwconv3 -> GELU -> dwconv3 (t); u = CA(conv1x1(cat(a, b))); m = u + x;
out = GDFN(LN2(m)) + m. LayerNorm2d: eps 1e-6, biased variance; GELU: exact erf.

Flax names mirror the torch keys with the `Restorer.` prefix dropped and dots joined by
`_` for sequence indices: `encoder_block1.0.conv_local.2.weight` ->
`encoder_block1_0/conv_local_2/kernel`, `down1.body.0.weight` -> `down1/body_0/kernel`,
`ca.body.2` -> `ca/body_2`, `norm1.weight` -> `norm1/scale`, `gdfn.project_in` ->
`gdfn/project_in`, `upscale.4` -> `upscale_4`, attention `nla.conv_match.0` -> `nla/...`
(see `jaxsr.attention`).

Beyond the original: `scale` 2 and 3 work (the bicubic skip follows `scale`; the official
code hard-codes x4), the bicubic kernel is selectable (a = -0.5 and/or renormalised
borders = torchvision's antialiased upsampling), and inputs of any size run: the network
body sees the LR reflect-padded to a multiple of 4 and to at least `min_input_size` per
side (the latent NLSA needs (H/4)(W/4) >= chunk size), and its output is cropped back;
the bicubic skip always uses the unpadded LR.

scan_blocks (`jaxsr.models.scan`): each stage of two or more NLC blocks runs as one scan
`scan_<stage>` (e.g. `scan_latent_block/block/nla/...`); the evaluation rotations of
block i are those of its unrolled NLSA `<stage>_<i>/nla`, passed into the scan.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsr.attention import NonLocalSparseAttention, lsh
from jaxsr.models import common, scan
from jaxsr.models import init as init_lib
from jaxsr.ops import torch_bicubic

# Block counts of the official model, in U-Net order.
BLOCKS = {"encoder_block1": 6, "encoder_block2": 8, "latent_block": 10,
          "decoder_block1": 6, "decoder_block2": 8, "refine_block": 8}
STAGES = tuple(BLOCKS)


def conv(x, features: int, k: int, *, use_bias: bool = True, groups: int = 1, name: str):
    """`common.conv` applied to x, with PyTorch's default Conv2d initialisation.

    torch initialises weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform
    with a = sqrt(5)); the authors trained from that. Flax's lecun-normal default has 3x the
    weight variance; over the 46 residual blocks that makes the initial residual ~30x
    larger (mean |SR - bicubic| 3.5 instead of 0.10 for a 48x48 LR, measured with the
    PyTorch reference), so training from scratch would not start where the official one
    does. (The NLSA convs keep the attention module's own init: 0.13 with that.)
    """
    bound = 1.0 / math.sqrt(x.shape[-1] // groups * k * k)
    pad = k // 2
    return nn.Conv(features, (k, k), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                   feature_group_count=groups, kernel_init=init_lib.uniform(bound),
                   bias_init=init_lib.uniform(bound), name=name)(x)


def gelu(x):
    return jax.nn.gelu(x, approximate=False)    # torch nn.GELU(): exact erf form


def layer_norm2d(name):
    """NAFNet/Restormer LayerNorm2d over channels: eps 1e-6, mean((x - mu)^2) variance."""
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name=name)


class CALayer(nn.Module):
    """Channel attention (reduction 16): u * sigmoid(conv1(GELU(conv1(mean_hw(u)))))."""
    channels: int
    reduction: int = 16

    @nn.compact
    def __call__(self, u):
        y = jnp.mean(u, axis=(1, 2), keepdims=True)
        y = conv(y, self.channels // self.reduction, 1, name="body_0")
        y = conv(gelu(y), self.channels, 1, name="body_2")
        return u * jax.nn.sigmoid(y)


class GDFN(nn.Module):
    """Restormer gated-dconv FFN: hidden int(c * 2.66), no biases."""
    channels: int
    expansion: float = 2.66

    @nn.compact
    def __call__(self, x):
        hidden = int(self.channels * self.expansion)
        y = conv(x, 2 * hidden, 1, use_bias=False, name="project_in")
        y = conv(y, 2 * hidden, 3, use_bias=False, groups=2 * hidden, name="dwconv")
        y1, y2 = jnp.split(y, 2, axis=-1)
        return conv(gelu(y1) * y2, self.channels, 1, use_bias=False, name="project_out")


class NLCBlock(nn.Module):
    """CRB_Layer: pre-norm NLSA + depthwise branch, 1x1 fusion, CA, residual, GDFN."""
    channels: int
    chunk_size: int = 144
    n_hashes: int = 4
    reduction: int = 4
    attention_impl: str = "auto"   # lsh.ATTENTION_IMPLS

    @nn.compact
    def __call__(self, x, train: bool = False, rotations=None):
        c = self.channels
        t = layer_norm2d("norm1")(x)
        a = NonLocalSparseAttention(chunk_size=self.chunk_size, n_hashes=self.n_hashes,
                                    reduction=self.reduction, res_scale=1.0,
                                    attention_impl=self.attention_impl, name="nla")(
                                        t, train=train, rotations=rotations)
        b = conv(t, c, 3, groups=c, name="conv_local_0")
        b = conv(gelu(b), c, 3, groups=c, name="conv_local_2")
        u = conv(jnp.concatenate([a, b], axis=-1), c, 1, name="conv1_last")
        m = CALayer(c, name="ca")(u) + x
        return GDFN(c, name="gdfn")(layer_norm2d("norm2")(m)) + m


class NLCUnet(scan.LayoutMixin, nn.Module):
    """The Restorer: LR NHWC in [0, 1] -> SR (not clamped); see the module docstring.

    `blocks` gives the NLC block count of each stage in `BLOCKS` order.
    """
    scale: int = 4
    nf: int = 64
    blocks: tuple[int, ...] = tuple(BLOCKS.values())
    chunk_size: int = 144
    n_hashes: int = 4
    reduction: int = 4
    bicubic_a: float = torch_bicubic.TORCH_A
    bicubic_border: str = "clamp"
    attention_impl: str = "auto"   # lsh.ATTENTION_IMPLS
    scan_blocks: bool = False
    remat: str = "none"            # config.train.remat (scan.REMAT_CHOICES)

    def _scanned_stage(self, idx) -> bool:
        return self.scan_blocks and self._scannable(idx)

    def _scannable(self, idx) -> bool:
        return self.blocks[idx] >= 2

    def _stage(self, idx, x, channels, train):
        """Stage `idx` of BLOCKS: blocks named `<stage>_<i>` (torch `<stage>.<i>`), or the
        scan `scan_<stage>`."""
        name, n = STAGES[idx], self.blocks[idx]
        kwargs = dict(channels=channels, chunk_size=self.chunk_size, n_hashes=self.n_hashes,
                      reduction=self.reduction, attention_impl=self.attention_impl)
        if self._scanned_stage(idx):
            return scan.scan_blocks(NLCBlock, n, x, name=f"scan_{name}", kwargs=kwargs,
                                    call_kwargs=dict(train=train), remat=self.remat,
                                    rotations=self._stage_rotations(name, n, x),
                                    pass_rotations=True)
        block = scan.maybe_remat(NLCBlock, self.remat, static_argnums=(2,))
        for i in range(n):
            x = block(**kwargs, name=f"{name}_{i}")(x, train)
        return x

    def _stage_rotations(self, name, n, x):
        """The unrolled NLSAs' evaluation rotations (None: the scan draws or reads them)."""
        if not scan.wants_fixed_rotations(self):
            return None
        _, h, w, c = x.shape
        return scan.fixed_rotation_stack([f"{name}_{i}/nla" for i in range(n)],
                                         lsh.CROSS_POLYTOPE, c // self.reduction,
                                         self.n_hashes, lsh.num_buckets(h * w, self.chunk_size))

    def param_stacks(self) -> tuple:
        """The stacks of the scanned layout (whichever layout this model uses)."""
        return tuple(scan.Stack((f"scan_{name}", "block"),
                                tuple((f"{name}_{i}",) for i in range(self.blocks[idx])),
                                (self.blocks[idx],))
                     for idx, name in enumerate(STAGES) if self._scannable(idx))

    @nn.compact
    def __call__(self, lr, train: bool = False):
        if lr.ndim != 4 or lr.shape[-1] != 3:
            raise ValueError(f"NLCUnet expects NHWC RGB input, got shape {lr.shape}")
        h, w = lr.shape[1:3]
        lr_bic = jnp.clip(torch_bicubic.upscale(lr, self.scale, self.bicubic_a,
                                                self.bicubic_border), 0.0, 1.0)
        x = pad_input(lr, self.chunk_size)
        f = self.body(x, train)
        return f[:, :h * self.scale, :w * self.scale] + lr_bic

    def body(self, x, train):
        """The U-Net on a padded LR (sides multiple of 4); returns the upscaled residual.
        Called from the compact `__call__`, so its submodules belong to this module."""
        nf = self.nf
        x = conv(x, nf, 3, name="head")
        e1 = self._stage(0, x, nf, train)
        x = _Resample(nf // 2, shuffle=False, name="down1")(e1)
        e2 = self._stage(1, x, 2 * nf, train)
        x = _Resample(nf, shuffle=False, name="down2")(e2)
        x = self._stage(2, x, 4 * nf, train)
        x = _Resample(8 * nf, shuffle=True, name="up1")(x)
        x = conv(jnp.concatenate([e2, x], axis=-1), 2 * nf, 1, name="conv1x1_1")
        x = self._stage(3, x, 2 * nf, train)
        x = _Resample(4 * nf, shuffle=True, name="up2")(x)
        x = self._stage(4, jnp.concatenate([e1, x], axis=-1), 2 * nf, train)
        x = self._stage(5, x, 2 * nf, train)
        x = conv(x, nf, 3, name="fusion")
        return _upscale(x, self.scale, nf)


class _Resample(nn.Module):
    """NLCUnet Downsample/Upsample: conv3 (no bias, torch `body.0`), then (un)shuffle 2."""
    features: int
    shuffle: bool

    @nn.compact
    def __call__(self, x):
        y = conv(x, self.features, 3, use_bias=False, name="body_0")
        return common.pixel_shuffle(y, 2) if self.shuffle else common.pixel_unshuffle(y, 2)


def _upscale(x, scale, nf):
    """Torch `upscale` Sequential: x4 = conv, PS2, conv, PS2, conv (keys 0, 2, 4);
    x2/x3 = conv, PS(s), conv (keys 0, 2). Called inside NLCUnet's compact scope."""
    if scale == 4:
        for i in (0, 2):
            x = common.pixel_shuffle(conv(x, 4 * nf, 3, name=f"upscale_{i}"), 2)
        return conv(x, 3, 3, name="upscale_4")
    if scale in (2, 3):
        x = common.pixel_shuffle(conv(x, nf * scale ** 2, 3, name="upscale_0"), scale)
        return conv(x, 3, 3, name="upscale_2")
    raise ValueError(f"NLCUnet supports scale 2, 3 or 4, got {scale}")


# ----------------------------------------------------------------------------------------
# Input-size handling
# ----------------------------------------------------------------------------------------

def min_side(chunk_size: int = 144) -> int:
    """Smallest square LR side for which the latent NLSA has (H/4)(W/4) >= chunk_size."""
    return 4 * math.ceil(math.sqrt(chunk_size))


def padded_size(h: int, w: int, chunk_size: int = 144) -> tuple[int, int]:
    """(H, W) rounded up to multiples of 4; if the latent level would still be smaller than
    one chunk, both sides are raised to at least `min_side`."""
    hp, wp = -(-h // 4) * 4, -(-w // 4) * 4
    if (hp // 4) * (wp // 4) < chunk_size:
        hp, wp = max(hp, min_side(chunk_size)), max(wp, min_side(chunk_size))
    return hp, wp


def pad_input(x, chunk_size: int = 144):
    """Reflect-pad an NHWC batch at the bottom/right to `padded_size` (identity if fits).

    jnp.pad's reflect mode reflects repeatedly, so pads larger than the image work too.
    """
    h, w = x.shape[1:3]
    hp, wp = padded_size(h, w, chunk_size)
    if (hp, wp) == (h, w):
        return x
    return jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="reflect")


# ----------------------------------------------------------------------------------------
# Registry hooks
# ----------------------------------------------------------------------------------------

def build(config):
    m = config.model
    blocks = tuple(m.get("blocks", tuple(BLOCKS.values())))
    if len(blocks) != len(BLOCKS):
        raise ValueError(f"config.model.blocks needs {len(BLOCKS)} counts "
                         f"({', '.join(BLOCKS)}), got {blocks}")
    return NLCUnet(scale=config.scale, nf=m.get("nf", 64), blocks=blocks,
                   chunk_size=m.get("chunk_size", 144), n_hashes=m.get("n_hashes", 4),
                   reduction=m.get("reduction", 4),
                   bicubic_a=m.get("bicubic_a", torch_bicubic.TORCH_A),
                   bicubic_border=m.get("bicubic_border", "clamp"),
                   attention_impl=m.get("attention_impl", "auto"),
                   scan_blocks=scan.scan_enabled(m), remat=scan.remat_from_config(config))


def input_multiple(config) -> int:
    del config
    return 4


def min_input_size(config) -> int:
    return min_side(config.model.get("chunk_size", 144))
