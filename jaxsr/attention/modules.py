"""Thin flax.linen modules around `jaxsr.attention.lsh`: NLSA (NLSN) and GLA (DLSN).

Both take NHWC features (channels C inferred from the input) and return
`attention(x) * res_scale + x`, like the official modules.

Hash rotations (which random projections bucket the features) are chosen per call, in
this order of precedence:

1. `rotations=` argument of `__call__` (an array of the shape below);
2. a variable `'lsh_rotations'/'rotations'` of this module, e.g. to replay a whole network:
   `_, st = model.apply({'params': p}, x, rngs=..., mutable=['intermediates'])`, then
   `model.apply({'params': p, 'lsh_rotations': st['intermediates']}, x)` uses the same
   rotations in every layer (a sown tuple is accepted: its last entry is used);
3. the 'lsh' RNG stream when the caller passes one (`rngs={'lsh': key}`, training);
4. otherwise fixed rotations drawn with NumPy from `default_rng([eval_seed, crc32(path)])`
   (path: the module path inside the model, e.g. 'body_9'; `lsh.fixed_rotations`), a
   constant of the compiled program. Evaluation is thus deterministic and independent of
   batch composition, evaluation order and device (the official code redraws at every
   call, also in eval: NLSN issue #4). They depend on the feature size only through nb.

The rotations used are sown into 'intermediates'/'rotations' (when that collection is
mutable). Shapes, with Cq = C // reduction, R = n_hashes, nb = `lsh.num_buckets(H*W, K)`:
  * NLSA: [Cq, R, nb // 2], i.e. torch's `random_rotations[0]` (its shape (1, Cq, R, nb/2));
  * GLA:  [Cq, R, nb], torch's concatenated `orthogonal_` matrices reshaped to [Cq, R, nb]
    (rotations[:, r, :] is the r-th [Cq, nb] matrix).
For parity with PyTorch inject the same tensor there and run torch with a stable sort.

Torch key -> Flax path (the `.0` of a one-conv `BasicBlock` is dropped, a Sequential
index is appended with `_`): `conv_match.0.weight` -> `conv_match/kernel`,
`conv_assembly.0.*` -> `conv_assembly/*`, `conv_assembly_fc.0.*` -> `conv_assembly_fc/*`,
`fc.0.*` -> `fc_0/*`, `fc.2.*` -> `fc_2/*`.

`chunks_per_step` (no parameters; None: the backend default) sets how many chunks the
attention processes per loop step: a cap on the attention's memory on an accelerator
(`jaxsr.attention.chunked`; `chunked.default_chunks_per_step` sets it for a whole model).
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxsr.attention import lsh
from jaxsr.models import common

ROTATIONS_COLLECTION = "lsh_rotations"


def select_rotations(module: nn.Module, explicit, kind: str, dim: int, n_hashes: int,
                     n_buckets: int, seed: int):
    """Applies the precedence described in the module docstring and sows the result."""
    shape = lsh.rotation_shape(kind, dim, n_hashes, n_buckets)
    path = "/".join(str(p) for p in module.path)
    if explicit is None and module.has_variable(ROTATIONS_COLLECTION, "rotations"):
        explicit = module.get_variable(ROTATIONS_COLLECTION, "rotations")
        if isinstance(explicit, (tuple, list)):
            explicit = explicit[-1]
    if explicit is not None:
        rot = jnp.asarray(explicit, jnp.float32)
        if rot.shape != shape:
            raise ValueError(f"{path or type(module).__name__}: injected rotations have "
                             f"shape {rot.shape}, expected {shape} ([Cq, n_hashes, "
                             f"{'nb/2' if kind == lsh.CROSS_POLYTOPE else 'nb'}])")
    elif module.has_rng("lsh"):
        rot = lsh.sample_rotations(module.make_rng("lsh"), kind, dim, n_hashes, n_buckets)
    else:
        rot = jnp.asarray(lsh.fixed_rotations(seed, path, kind, dim, n_hashes, n_buckets))
    if not module.is_initializing():
        module.sow("intermediates", "rotations", rot)
    return rot


class NonLocalSparseAttention(nn.Module):
    """NLSA (Mei et al., CVPR 2021): cross-polytope LSH, chunked attention.

    Attributes (official names): chunk_size K, n_hashes R, reduction (match width
    C // reduction), res_scale (NLSN passes 0.1, NLCUnet 1), conv_match_kernel (official
    `k_size`, 3). chunk_size and n_hashes carry no parameters and may be changed at
    evaluation time.
    """
    chunk_size: int = 144
    n_hashes: int = 4
    reduction: int = 4
    res_scale: float = 1.0
    conv_match_kernel: int = 3
    max_buckets: int = lsh.MAX_BUCKETS
    eval_seed: int = 0
    chunks_per_step: Optional[int] = None
    attention_impl: str = "auto"     # 'auto' | 'xla' | 'pallas' (lsh.ATTENTION_IMPLS)

    @nn.compact
    def __call__(self, x, train: bool = False, rotations: Optional[jnp.ndarray] = None):
        del train  # randomness depends only on whether an 'lsh' RNG is passed
        n, h, w, c = x.shape
        cq = c // self.reduction
        q = common.conv(cq, self.conv_match_kernel, name="conv_match")(x)
        v = common.conv(c, 1, name="conv_assembly")(x)
        nb = lsh.num_buckets(h * w, self.chunk_size, self.max_buckets)
        rot = select_rotations(self, rotations, lsh.CROSS_POLYTOPE, cq, self.n_hashes, nb,
                               self.eval_seed)
        out = lsh.batched_lsh_attention(q.reshape(n, h * w, cq), v.reshape(n, h * w, c),
                                        rot, self.chunk_size, lsh.CROSS_POLYTOPE,
                                        max_buckets=self.max_buckets,
                                        chunks_per_step=self.chunks_per_step,
                                        impl=self.attention_impl)
        return out.reshape(n, h, w, c) * self.res_scale + x


class GlobalLearnableAttention(nn.Module):
    """GLA (Su et al., TPAMI 2022): Super-Bit LSH + learnable similarity score.

    The score of query slot i and key j is <q_i, k_j/|k_j|> + fc(f_j)[i], with
    f = ReLU(conv3(x)) and fc = Linear(C, K) -> ReLU -> Linear(K, K); K is baked into
    `fc`, so a checkpoint fixes chunk_size (n_hashes stays free). For L < K only the
    first L outputs of fc are used (official: crash).
    """
    chunk_size: int = 128
    n_hashes: int = 3
    reduction: int = 4
    res_scale: float = 1.0
    conv_match_kernel: int = 3
    max_buckets: int = lsh.MAX_BUCKETS
    eval_seed: int = 0
    chunks_per_step: Optional[int] = None
    attention_impl: str = "auto"     # 'auto' | 'xla' | 'pallas' (lsh.ATTENTION_IMPLS)

    @nn.compact
    def __call__(self, x, train: bool = False, rotations: Optional[jnp.ndarray] = None):
        del train
        n, h, w, c = x.shape
        cq, k = c // self.reduction, self.conv_match_kernel
        q = nn.relu(common.conv(cq, k, name="conv_match")(x))
        v = nn.relu(common.conv(c, k, name="conv_assembly")(x))
        f = nn.relu(common.conv(c, k, name="conv_assembly_fc")(x))
        # fc acts row-wise on the keys, so it is applied once per position (L rows)
        # instead of on the R*3 look-around copies; the result is gathered like v.
        g = nn.Dense(self.chunk_size, name="fc_0")(f.reshape(n, h * w, c))
        g = nn.Dense(self.chunk_size, name="fc_2")(nn.relu(g))
        nb = lsh.num_buckets(h * w, self.chunk_size, self.max_buckets)
        rot = select_rotations(self, rotations, lsh.SUPERBIT, cq, self.n_hashes, nb,
                               self.eval_seed)
        out = lsh.batched_lsh_attention(q.reshape(n, h * w, cq), v.reshape(n, h * w, c),
                                        rot, self.chunk_size, lsh.SUPERBIT, key_bias=g,
                                        max_buckets=self.max_buckets,
                                        chunks_per_step=self.chunks_per_step,
                                        impl=self.attention_impl)
        return out.reshape(n, h, w, c) * self.res_scale + x
