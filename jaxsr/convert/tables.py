"""Conversion tables, one per architecture: torch module name <-> Flax module path + layout.

Official key listings: /work/shared/spec/architectures.md sections 2.5 (NLSN), 3.4 (DLSN),
4.3 (NLCUnet), 6 (USRNet); EDSR as in EDSR-PyTorch. A new architecture needs one entry in
`TABLES` (keyed by config.model.name) and nothing else.
"""
import re

import numpy as np

from jaxsr.convert.core import Const, Leaf, Probe, Rule, Table
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
            return (f"the checkpoint was made with rgb_range {implied.mean():g}; "
                    f"set --config.model.rgb_range={implied.mean():g} if the model supports it")
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


def _n_feats(shapes):
    return _shape(shapes, "head.0.weight", 0)


def _scale(shapes):
    """x4 has two conv+PS(2) stages (tail.0.2); x2 one with 4C outputs, x3 one with 9C."""
    c, up = _n_feats(shapes), _shape(shapes, "tail.0.0.weight", 0)
    if c is None or up is None:
        return None
    if "tail.0.2.weight" in shapes:
        return 4
    return {4 * c: 2, 9 * c: 3}.get(up)


def _count(pattern: str):
    """Number of distinct indices i whose keys match `pattern` (a regex with one group)."""
    rx = re.compile(pattern)

    def read(shapes):
        found = {m.group(1) for k in shapes if (m := rx.fullmatch(k))}
        return len(found) or None
    return read


_PROBE_FEATS = Probe("model.n_feats", _n_feats, "head.0.weight")
_PROBE_SCALE = Probe("scale", _scale, "tail.0.* upsampler convs")


# ----------------------------------------------------------------------------------------
# EDSR
# ----------------------------------------------------------------------------------------

EDSR = Table(
    name="edsr",
    rules=_edsr_family(
        Rule("body.{i}.body.{j}", "body_{i}/body_{j}"),   # ResBlock convs 0 and 2
        Rule("body.{i}", "body_{i}"),                     # final body conv
    ),
    consts=MEAN_SHIFT,
    probes=(_PROBE_FEATS, _PROBE_SCALE,
            Probe("model.n_resblocks", _count(r"body\.(\d+)\.body\.0\.weight"),
                  "body.{i}.body.0.weight")),
)


TABLES: dict[str, Table] = {
    "edsr": EDSR,
}
