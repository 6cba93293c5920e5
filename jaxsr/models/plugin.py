"""GLA as a plug-in block for networks without attention (DLSN section 4.3.3, Fig. 5).

`config.model.attention = 'gla'` inserts a `GlobalLearnableAttention` (DLSN's GLA, residual
scale 1 as inside DLSN) at each of `config.model.attention_positions` (empty: the host's
default); 'none' (default) leaves the host network untouched, parameter for parameter.
What a position means is the host's choice and is written in its docstring (EDSR: after
that many ResBlocks; RCAN: after that many residual groups; FSRCNN: after that many layers
of the mapping part).

The GLA blocks are named `gla_<position>`, a name PyTorch checkpoints of the host never
use, so converted weights of the plain network still load (the GLA starts from scratch).

GLA settings, with DLSN's defaults: `config.model.chunk_size` (128; baked into the GLA
`fc` shapes), `config.model.n_hashes` (3; free at evaluation time),
`config.model.gla_reduction` (4: hash/match width C // 4).
"""
import dataclasses
from typing import Optional, Tuple

from jaxsr.attention import GlobalLearnableAttention

ATTENTIONS = ("none", "gla")


@dataclasses.dataclass(frozen=True)
class GLASpec:
    """Where and how GLA is inserted (hashable: it is a field of linen modules)."""
    positions: Tuple[int, ...]
    chunk_size: int = 128
    n_hashes: int = 3
    reduction: int = 4
    attention_impl: str = "auto"   # lsh.ATTENTION_IMPLS


def spec_from_config(model_cfg, default_positions: Tuple[int, ...]) -> Optional[GLASpec]:
    """`GLASpec` for `config.model.attention == 'gla'`, None for 'none' (or no field)."""
    kind = model_cfg.get("attention", "none")
    if kind not in ATTENTIONS:
        raise ValueError(f"config.model.attention={kind!r} is unknown; use one of {ATTENTIONS}")
    if kind == "none":
        return None
    positions = tuple(model_cfg.get("attention_positions", None) or default_positions)
    if len(set(positions)) != len(positions):
        raise ValueError(f"config.model.attention_positions={positions!r}: positions must "
                         "be distinct")
    return GLASpec(positions=tuple(int(p) for p in positions),
                   chunk_size=int(model_cfg.get("chunk_size", 128)),
                   n_hashes=int(model_cfg.get("n_hashes", 3)),
                   reduction=int(model_cfg.get("gla_reduction", 4)),
                   attention_impl=model_cfg.get("attention_impl", "auto"))


def check_positions(spec: Optional[GLASpec], n_positions: int, model: str) -> None:
    """Positions must lie in 0..n_positions (the host's number of insertion points - 1)."""
    if spec is None:
        return
    bad = [p for p in spec.positions if not 0 <= p <= n_positions]
    if bad:
        raise ValueError(f"config.model.attention_positions={spec.positions}: {bad} outside "
                         f"0..{n_positions}, the insertion points of this {model}")


def maybe_gla(spec: Optional[GLASpec], position: int, x, train: bool):
    """x, or GLA(x) when `position` is one of the spec's; call it inside the host's
    `@nn.compact __call__` (the block becomes the host's submodule `gla_<position>`)."""
    if spec is None or position not in spec.positions:
        return x
    attn = GlobalLearnableAttention(chunk_size=spec.chunk_size, n_hashes=spec.n_hashes,
                                    reduction=spec.reduction, res_scale=1.0,
                                    attention_impl=spec.attention_impl, name=f"gla_{position}")
    return attn(x, train=train)
