"""Conversion tables, one per architecture: torch module name <-> Flax module path + layout.

Official key listings: /work/shared/spec/architectures.md sections 2.5 (NLSN), 3.4 (DLSN),
4.3 (NLCUnet), 6 (USRNet); EDSR as in EDSR-PyTorch. A new architecture needs one entry in
`TABLES` (keyed by config.model.name) and nothing else.
"""
import re

import numpy as np

from jaxsr.convert.core import Const, Probe, Rule, Table
from jaxsr.models.common import DIV2K_RGB_MEAN

# ----------------------------------------------------------------------------------------
# EDSR family (EDSR, NLSN, DLSN): MeanShift constants, head, tail
# ----------------------------------------------------------------------------------------


def _rgb_range(config) -> float:
    return float(config.model.get("rgb_range", 1.0))


def _mean_shift(sign: float, part: str):
    """EDSR MeanShift(rgb_range, mean, std=1, sign): weight eye/std, bias sign*range*mean/std."""
    def value(config):
        if part == "weight":
            return np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
        return np.float32(sign * _rgb_range(config)) * np.asarray(DIV2K_RGB_MEAN, np.float32)
    return value


def _explain_mean_bias(sign: float):
    def explain(got):
        implied = got.ravel() / (sign * np.asarray(DIV2K_RGB_MEAN))
        if np.allclose(implied, implied.mean(), rtol=1e-3):
            return (f"the checkpoint was made with rgb_range {implied.mean():g} (EDSR-PyTorch "
                    f"and RCAN release models use 255): pass --rgb_range={implied.mean():g} "
                    f"to rescale it exactly to the config's range")
        return "not the DIV2K mean: the model was trained with other MeanShift constants"
    return explain


def _explain_identity(got):
    return "MeanShift weight is not the identity (std != 1): not supported"


MEAN_SHIFT = tuple(
    Const(f"{name}.{part}", _mean_shift(sign, part),
          explain=_explain_mean_bias(sign) if part == "bias" else _explain_identity)
    for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)) for part in ("weight", "bias"))

def _edsr_family(*body_rules: Rule) -> tuple[Rule, ...]:
    """head.0, the architecture's body rules, then the EDSR Upsampler tail (in torch order)."""
    return (Rule("head.0", "head_0"),) + body_rules + (
        Rule("tail.0.{i}", "tail_0/layers_{i}"),      # Upsampler convs (x4: 0 and 2)
        Rule("tail.1", "tail_1"),
    )


def _shape(shapes, key, dim):
    return shapes[key][dim] if key in shapes and len(shapes[key]) > dim else None


def _first(pattern: str, dim: int):
    """Reads dimension `dim` of the first key matching `pattern`."""
    rx = re.compile(pattern)
    return lambda shapes: next((s[dim] for k, s in shapes.items()
                                if rx.fullmatch(k) and len(s) > dim), None)


def _indices(shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := rx.fullmatch(k))})


def _count(pattern: str):
    """Number of distinct indices whose keys match `pattern` (a regex with one group)."""
    return lambda shapes: len(_indices(shapes, pattern)) or None


def _reduction(pattern: str):
    """C // Cq from the first hash-embedding conv weight [Cq, C, k, k]."""
    def read(shapes):
        s = next((s for k, s in shapes.items() if re.fullmatch(pattern, k)), None)
        return s[1] // s[0] if s and s[0] and s[1] % s[0] == 0 else None
    return read


def _upsampler_scale(prefix: str, feats):
    """x4 = two conv C->4C + PS(2) stages (`prefix`.0 and .2), x2/x3 = one conv C->s^2 C."""
    def read(shapes):
        c, up = feats(shapes), _shape(shapes, f"{prefix}.0.weight", 0)
        if c is None or up is None:
            return None
        second = _shape(shapes, f"{prefix}.2.weight", 0)
        if second is not None and second == 4 * c and up == 4 * c:
            return 4
        return {4 * c: 2, 9 * c: 3}.get(up)
    return read


_n_feats = _first(r"head\.0\.weight", 0)
_PROBE_FEATS = Probe("model.n_feats", _n_feats, "head.0.weight")
_PROBE_SCALE = Probe("scale", _upsampler_scale("tail.0", _n_feats), "tail.0.* upsampler convs")


def gla_rules(torch_prefix: str, flax_prefix: str) -> tuple[Rule, ...]:
    """DLSN's GLA module (conv_match/conv_assembly/conv_assembly_fc BasicBlocks, fc MLP)."""
    return tuple(Rule(f"{torch_prefix}.{n}.0", f"{flax_prefix}/{n}")
                 for n in ("conv_match", "conv_assembly", "conv_assembly_fc")) + (
        Rule(f"{torch_prefix}.fc.{{k}}", f"{flax_prefix}/fc_{{k}}", "linear"),)


# GLA plug-in blocks (jaxsr.models.plugin, DLSN section 4.3.3) of EDSR/RCAN/FSRCNN: no
# official torch class has them; they get DLSN's GLA key names under `gla_<p>`.
PLUGIN_GLA = gla_rules("gla_{p}", "gla_{p}")
_PLUGIN_OFFICIAL = (("model.attention", "none"),)

# ----------------------------------------------------------------------------------------
# EDSR
# ----------------------------------------------------------------------------------------

EDSR = Table(
    name="edsr",
    rules=_edsr_family(
        Rule("body.{i}.body.{j}", "body_{i}/body_{j}"),   # ResBlock convs 0 and 2
        Rule("body.{i}", "body_{i}"),                     # final body conv
        *PLUGIN_GLA,
    ),
    consts=MEAN_SHIFT,
    probes=(_PROBE_FEATS, _PROBE_SCALE,
            Probe("model.n_resblocks", _count(r"body\.(\d+)\.body\.0\.weight"),
                  "body.{i}.body.0.weight")),
    official=_PLUGIN_OFFICIAL,
    range_scaling=((r"gla_\d+\..*", None), (r".*\.bias", -1)),   # GLA: not homogeneous
)


# ----------------------------------------------------------------------------------------
# NLSN (spec 2.5): NLSA at body.0 and after every 8th ResBlock
# ----------------------------------------------------------------------------------------

_NLSA = r"body\.(\d+)\.conv_match\.0\.weight"


def _attn_every(shapes):
    """ResBlocks between the first two NLSAs (the official class: 8)."""
    idx = _indices(shapes, _NLSA)
    return idx[1] - idx[0] - 1 if len(idx) > 1 else None


NLSN = Table(
    name="nlsn",
    rules=_edsr_family(
        Rule("body.{i}.body.{j}", "body_{i}/body_{j}"),                   # ResBlocks
        Rule("body.{i}.conv_match.0", "body_{i}/conv_match"),             # NLSA conv3 C->C/4
        Rule("body.{i}.conv_assembly.0", "body_{i}/conv_assembly"),       # NLSA conv1 C->C
        Rule("body.{i}", "body_{i}"),                                     # final body conv
    ),
    consts=MEAN_SHIFT,
    probes=(_PROBE_FEATS, _PROBE_SCALE,
            Probe("model.n_resblocks", _count(r"body\.(\d+)\.body\.0\.weight"),
                  "body.{i}.body.0.weight"),
            Probe("model.attn_every", _attn_every, "positions of the NLSA keys", default=8),
            Probe("model.reduction", _reduction(_NLSA), "conv_match.0.weight", default=4)),
    official=(("model.attn_every", 8),),
    signature=(_NLSA,),
)

# ----------------------------------------------------------------------------------------
# DLSN (spec 3.4): GLAFFM body.i = LFFBs body.i.body.j, GLA, conv; the unused scalar `a`
# ----------------------------------------------------------------------------------------

_GLA_MATCH = r"body\.(\d+)\.body\.\d+\.conv_match\.0\.weight"
_GLA_FC0 = r"body\.\d+\.body\.\d+\.fc\.0\.weight"

DLSN = Table(
    name="dlsn",
    rules=_edsr_family(
        Rule("body.{i}.body.{j}.body.{k}", "body_{i}/body_{j}/body_{k}"),      # LFFB convs
        *gla_rules("body.{i}.body.{j}", "body_{i}/body_{j}"),                  # GLA
        Rule("body.{i}.body.{j}", "body_{i}/body_{j}"),                        # GLAFFM conv
        Rule("body.{i}", "body_{i}"),                                          # final conv
    ),
    # `a` is never read by the official forward, so another value is harmless: a warning.
    consts=(Const("a", lambda config: np.zeros((1,), np.float32), strict=False,
                  explain=lambda got: "unused by the forward pass; dropped"),) + MEAN_SHIFT,
    probes=(_PROBE_FEATS, _PROBE_SCALE,
            Probe("model.chunk_size", _first(_GLA_FC0, 0), "GLA fc.0.weight [chunk_size, C]"),
            Probe("model.n_resgroups", _count(_GLA_MATCH), "GLA conv_match keys"),
            Probe("model.n_resblocks", _count(r"body\.0\.body\.(\d+)\.body\.0\.weight"),
                  "body.0.body.{j}.body.0.weight"),
            Probe("model.reduction", _reduction(_GLA_MATCH), "conv_match.0.weight", default=4)),
    signature=(_GLA_FC0,),
)

# ----------------------------------------------------------------------------------------
# NLCUnet (spec 4.3): keys under `Restorer.`, 46 NLC blocks in six stages
# ----------------------------------------------------------------------------------------

_STAGES = ("encoder_block1", "encoder_block2", "latent_block",
           "decoder_block1", "decoder_block2", "refine_block")
_S = "Restorer.{s:" + "|".join(_STAGES) + "}.{i}"     # torch prefix of one NLC block
_F = "{s}_{i}"                                          # flax prefix of the same block
_nf = _first(r"Restorer\.head\.weight", 0)

NLCUNET = Table(
    name="nlcunet",
    rules=(
        Rule("Restorer.head", "head"),
        Rule(_S + ".norm1", _F + "/norm1", "norm"),                      # LayerNorm2d
        Rule(_S + ".nla.conv_match.0", _F + "/nla/conv_match"),
        Rule(_S + ".nla.conv_assembly.0", _F + "/nla/conv_assembly"),
        Rule(_S + ".conv_local.{j}", _F + "/conv_local_{j}"),            # depthwise 3x3
        Rule(_S + ".conv1_last", _F + "/conv1_last"),
        Rule(_S + ".ca.body.{j}", _F + "/ca/body_{j}"),
        Rule(_S + ".norm2", _F + "/norm2", "norm"),
        Rule(_S + ".gdfn.{g:project_in|dwconv|project_out}", _F + "/gdfn/{g}"),
        Rule("Restorer.{r:down1|down2|up1}.body.0", "{r}/body_0"),    # conv, (un)shuffle
        Rule("Restorer.conv1x1_1", "conv1x1_1"),
        Rule("Restorer.up2.body.0", "up2/body_0"),
        Rule("Restorer.fusion", "fusion"),
        Rule("Restorer.upscale.{i}", "upscale_{i}"),
    ),
    probes=(Probe("model.nf", _nf, "Restorer.head.weight", default=64),
            Probe("scale", _upsampler_scale("Restorer.upscale", _nf), "Restorer.upscale.*"),
            Probe("model.blocks",
                  lambda sh: tuple(len(_indices(sh, rf"Restorer\.{st}\.(\d+)\.norm1\.weight"))
                                   for st in _STAGES) if "Restorer.head.weight" in sh else None,
                  "NLC blocks per stage", default=(6, 8, 10, 6, 8, 8)),
            Probe("model.reduction", _reduction(r"Restorer\..*\.nla\.conv_match\.0\.weight"),
                  "nla.conv_match.0.weight", default=4)),
    signature=(r"Restorer\.head\.weight",),
)

# ----------------------------------------------------------------------------------------
# USRNet (KAIR, spec 6): ResUNet prior `p`, HyPaNet `h`; the data step has no parameters
# ----------------------------------------------------------------------------------------


def _usrnet_hparams(config):
    from jaxsr.models import usrnet
    return usrnet.from_model_config(config.model, config.scale)


def _usrnet_nc(shapes):
    nb = len(_indices(shapes, r"p\.m_down1\.(\d+)\.res\.0\.weight"))
    keys = ["p.m_head.weight"] + [f"p.m_down{d}.{nb}.weight" for d in (1, 2, 3)]
    return tuple(shapes[k][0] for k in keys) if all(k in shapes for k in keys) else None


def _usrnet_n_iter(shapes):
    out = _shape(shapes, "h.mlp.4.weight", 0)
    return out // 2 if out else None


USRNET = Table(
    name="usrnet",
    rules=(
        Rule("p.m_head", "p/m_head"),
        Rule("p.m_down{d}.{j}.res.{k}", "p/m_down{d}/layers_{j}/res/layers_{k}"),
        Rule("p.m_down{d}.{j}", "p/m_down{d}/layers_{j}"),                # 2x2 stride-2 conv
        Rule("p.m_body.{j}.res.{k}", "p/m_body/layers_{j}/res/layers_{k}"),
        Rule("p.m_up{d:3|2|1}.0", "p/m_up{d}/layers_0", "conv_transpose"),  # 2x2 stride 2
        Rule("p.m_up{d}.{j}.res.{k}", "p/m_up{d}/layers_{j}/res/layers_{k}"),
        Rule("p.m_tail", "p/m_tail"),
        Rule("h.mlp.{j}", "h/mlp/layers_{j}"),                            # 1x1 convs
    ),
    probes=(Probe("model.nc", _usrnet_nc, "p.m_head / p.m_down*.{nb} widths",
                  expected=lambda c: tuple(_usrnet_hparams(c).nc)),
            Probe("model.n_iter", _usrnet_n_iter, "h.mlp.4.weight (2 n_iter outputs)",
                  expected=lambda c: _usrnet_hparams(c).n_iter),
            Probe("model.h_nc", _first(r"h\.mlp\.0\.weight", 0), "h.mlp.0.weight",
                  expected=lambda c: _usrnet_hparams(c).h_nc),
            Probe("model.nb", _count(r"p\.m_down1\.(\d+)\.res\.0\.weight"), "p.m_down1.{j}.res",
                  expected=lambda c: _usrnet_hparams(c).nb)),
    signature=(r"p\.m_head\.weight",),
)


# ----------------------------------------------------------------------------------------
# RCAN (EDSR-PyTorch model/rcan.py): groups body.g of RCABs body.g.body.j (+ group conv)
# ----------------------------------------------------------------------------------------

_RCAB_DU0 = r"body\.\d+\.body\.\d+\.body\.3\.conv_du\.0\.weight"

RCAN = Table(
    name="rcan",
    rules=_edsr_family(
        Rule("body.{g}.body.{j}.body.3.conv_du.{k}", "body_{g}/body_{j}/body_3/conv_du_{k}"),
        Rule("body.{g}.body.{j}.body.{k}", "body_{g}/body_{j}/body_{k}"),     # RCAB convs
        Rule("body.{g}.body.{j}", "body_{g}/body_{j}"),                       # group conv
        Rule("body.{g}", "body_{g}"),                                         # final conv
        *PLUGIN_GLA,
    ),
    consts=MEAN_SHIFT,
    probes=(_PROBE_FEATS, _PROBE_SCALE,
            Probe("model.n_resgroups", _count(r"body\.(\d+)\.body\.0\.body\.0\.weight"),
                  "body.{g}.body.0"),
            Probe("model.n_resblocks", _count(r"body\.0\.body\.(\d+)\.body\.0\.weight"),
                  "body.0.body.{j}"),
            Probe("model.reduction", _reduction(_RCAB_DU0), "conv_du.0.weight", default=16)),
    official=_PLUGIN_OFFICIAL,
    # The channel attention's sigmoid needs the same logits: conv_du.0 sees the pooled
    # features (range-scaled) so its weight takes the inverse factor, its output is fixed.
    range_scaling=((r"gla_\d+\..*", None), (r".*\.conv_du\.0\.weight", 1),
                   (r".*\.conv_du\.\d+\.bias", 0), (r".*\.bias", -1)),
    signature=(_RCAB_DU0,),
)

# ----------------------------------------------------------------------------------------
# FSRCNN (the yjn870/FSRCNN-pytorch layout): Sequential convs at even, PReLUs at odd indices
# ----------------------------------------------------------------------------------------


def _fsrcnn_color(shapes):
    c = _shape(shapes, "first_part.0.weight", 1)
    return {1: "y", 3: "rgb"}.get(c)


FSRCNN = Table(
    name="fsrcnn",
    rules=(
        Rule("first_part.0", "first_part_0"),
        Rule("first_part.1", "first_part_1", "prelu"),
        Rule(r"mid_part.{i:\d*[02468]}", "mid_part_{i}"),
        Rule(r"mid_part.{i:\d*[13579]}", "mid_part_{i}", "prelu"),
        Rule("last_part", "last_part", "conv_transpose_t"),        # 9x9, stride = scale
        *PLUGIN_GLA,
    ),
    # The scale is only the deconvolution's stride: no tensor shape depends on it.
    probes=(Probe("model.d", _first(r"first_part\.0\.weight", 0), "first_part.0.weight",
                  default=56),
            Probe("model.s", _first(r"mid_part\.0\.weight", 0), "mid_part.0.weight", default=12),
            Probe("model.m", lambda sh: len(_indices(sh, r"mid_part\.(\d+)\.bias")) - 2 or None,
                  "number of mid_part convs - 2", default=4),
            Probe("model.color", _fsrcnn_color, "first_part.0.weight input channels",
                  default="y")),
    official=_PLUGIN_OFFICIAL,
    range_scaling=((r"gla_\d+\..*", None), (r".*\.bias", -1)),   # PReLU is homogeneous
    signature=(r"first_part\.0\.weight",),
)


TABLES: dict[str, Table] = {
    "edsr": EDSR,
    "nlsn": NLSN,
    "dlsn": DLSN,
    "nlcunet": NLCUNET,
    "usrnet": USRNET,
    "gt_usrnet": USRNET,          # jaxsr.models.blind: the same {'p', 'h'} params as usrnet
    "rcan": RCAN,
    "fsrcnn": FSRCNN,
}
