"""Non-local attention for SR: NLSA (NLSN), GLA (DLSN) and dense non-local attention.

The math lives in pure functions (`jaxsr.attention.lsh`, `jaxsr.attention.dense`); the
linen modules only create the convolutions and choose the hash rotations (see
`jaxsr.attention.modules` for the rotation precedence and injection API).
"""
from jaxsr.attention import lsh
from jaxsr.attention.dense import NonLocalAttention, dense_attention
from jaxsr.attention.lsh import batched_lsh_attention, lsh_attention, num_buckets
from jaxsr.attention.modules import (ROTATIONS_COLLECTION, GlobalLearnableAttention,
                                     NonLocalSparseAttention)

__all__ = [
    "lsh", "NonLocalAttention", "dense_attention", "lsh_attention", "batched_lsh_attention",
    "num_buckets", "NonLocalSparseAttention", "GlobalLearnableAttention",
    "ROTATIONS_COLLECTION",
]
