"""Chunked LSH attention (NLSN's NLSA, DLSN's GLA) as small pure functions.

One feature map (no batch axis) of length L = H*W, flattened row-major (l = h*W + w, as
torch's `.view(N, C, H*W)`), with R hashing rounds, chunk size K and nb buckets:

  hash_codes          q [L,Cq], rotations      -> bucket ids [R, L]
  sort_order          bucket ids, nb           -> order [R, L] (stable), undo [R, L]
  chunk_indices       order                    -> padded sorted positions [R, M, K]
  look_around         [R,M,K,...]              -> [R,M,3K,...] (chunks m, m-1, m+1)
  attend_chunks       q, keys, v, ids (+ bias) -> sorted outputs [R,M*K,C], lse [R,M*K]
                      (`jaxsr.attention.chunked`: a few chunks per loop step, with an
                      explicit FlashAttention-style backward)
  unsort_and_merge    outputs, lse, undo       -> [L, C] (backward: gathers by `order`;
                      the sorted/pallas paths use `sorted_chunks.merge_rounds`)
  lsh_attention       all of the above; `batched_lsh_attention` for N items with one
                      rotation tensor shared by the batch (as the official code): hash,
                      sort and unsort per item, the chunk attention on all items' rows,
                      in the formulation `impl.resolve_impl` picks for attention_impl:
                      'looped' (attend_chunks, CPU), 'sorted' (`sorted_chunks`: tables
                      gathered into chunk order, no scatter: TPU/GPU) or 'pallas'.

Rotations: `sample_rotations` (from a JAX key: training), `fixed_rotations` (NumPy, from a
seed and a layer name: deterministic evaluation), `orthogonal_from_gaussian` (torch's
`orthogonal_` rule for Super-Bit LSH).

Everything follows the official PyTorch code (architectures.md 2.3 / 3.3), including the
duplicated keys it creates: the tail-copy padding to a multiple of K, the wrap-around
look-one-back/look-one-forward, and a chunk that sees itself three times when there is
only one chunk. The only deviation is where the official code crashes: for L < K it has
zero buckets; here the chunk shrinks to L, so that case is exact dense attention.

The L x L score matrix is never formed, and the chunk attention holds the scores of only
a few chunks at a time (`chunked`): memory is O(R * L * C) plus one loop step's scores.
"""
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import target_platform
from jaxsr.attention import chunked, sorted_chunks
from jaxsr.attention import impl as impl_lib    # (`impl` is an argument name here)
from jaxsr.attention.chunked import attend_chunks, look_around  # noqa: F401 (API)
from jaxsr.attention.impl import (ATTENTION_IMPLS, FORMULATIONS,  # noqa: F401 (API)
                                  describe_formulations, kernels_available,
                                  record_formulations, resolve_impl, use_formulation)

MAX_BUCKETS = 128   # official cap on the number of buckets
KEY_EPS = 5e-5      # F.normalize eps used on the keys
HASH_BLOCK_CPU = 512  # positions hashed per loop step on CPU (see hash_codes)

CROSS_POLYTOPE = "cross_polytope"   # NLSN: argmax over [xR, -xR], nb/2 random directions
SUPERBIT = "superbit"               # DLSN: argmax over xR, R with orthonormal columns/rows


# --------------------------------------------------------------------------- sizes

def num_buckets(length: int, chunk_size: int, max_buckets: int = MAX_BUCKETS) -> int:
    """Official nb = min(L//K + (L//K)%2, 128); 1 (a single bucket) when L < K."""
    if length < chunk_size:
        return 1
    m = length // chunk_size
    return min(m + m % 2, max_buckets)


def effective_chunk_size(length: int, chunk_size: int) -> int:
    """The chunk shrinks to L when L < K (official: crash); otherwise K."""
    return min(length, chunk_size)


def rotation_shape(kind: str, dim: int, n_hashes: int, n_buckets: int) -> tuple:
    """[Cq, R, nb/2] for cross-polytope (NLSN), [Cq, R, nb] for Super-Bit (DLSN)."""
    if kind == CROSS_POLYTOPE:
        return (dim, n_hashes, n_buckets // 2)
    if kind == SUPERBIT:
        return (dim, n_hashes, n_buckets)
    raise ValueError(f"unknown hash kind {kind!r}; use {CROSS_POLYTOPE!r} or {SUPERBIT!r}")


# --------------------------------------------------------------------------- rotations

def orthogonal_from_gaussian(a):
    """torch.nn.init.orthogonal_ applied to the Gaussian draw `a` [rows, cols]: reduced QR
    with the columns of Q multiplied by sign(diag(R)). As in torch, when rows < cols the
    QR is taken of the transpose, so the result has orthonormal rows, not columns."""
    rows, cols = a.shape
    if rows < cols:
        a = a.T
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    return q.T if rows < cols else q


def orthogonal(key, rows: int, cols: int, dtype=jnp.float32):
    """A random [rows, cols] matrix distributed as torch.nn.init.orthogonal_ makes it."""
    a = jax.random.normal(key, (rows, cols), jnp.float32)
    return orthogonal_from_gaussian(a).astype(dtype)


def sample_rotations(key, kind: str, dim: int, n_hashes: int, n_buckets: int,
                     dtype=jnp.float32):
    """Draws the rotation tensor of `rotation_shape(kind, ...)` from a JAX key."""
    shape = rotation_shape(kind, dim, n_hashes, n_buckets)
    if kind == CROSS_POLYTOPE:
        return jax.random.normal(key, shape, dtype)
    # one Gaussian draw for all rounds, then one orthogonal_ (QR + sign fix) per round
    a = jax.random.normal(key, (n_hashes, dim, n_buckets), jnp.float32)
    mats = jax.vmap(orthogonal_from_gaussian)(a)                    # [R, Cq, nb]
    return jnp.transpose(mats, (1, 0, 2)).astype(dtype)


def fixed_rotations(seed: int, name: str, kind: str, dim: int, n_hashes: int,
                    n_buckets: int) -> np.ndarray:
    """Deterministic rotations for evaluation, computed with NumPy at trace time (a
    constant in the compiled program: no RNG code, reproducible outside JAX).

    The generator is `np.random.default_rng([seed, crc32(name)])` (name: the module path,
    e.g. 'body_9'); Super-Bit rounds are orthogonalised like torch's orthogonal_.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = rotation_shape(kind, dim, n_hashes, n_buckets)
    if kind == CROSS_POLYTOPE:
        return rng.standard_normal(shape).astype(np.float32)
    mats = []
    for a in rng.standard_normal((n_hashes, dim, n_buckets)):     # static: R rounds
        t = a.T if dim < n_buckets else a
        q, r = np.linalg.qr(t)
        q = q * np.sign(np.diagonal(r))[None, :]
        mats.append(q.T if dim < n_buckets else q)
    return np.stack(mats, axis=1).astype(np.float32)


# --------------------------------------------------------------------------- hashing

def hash_codes(q, rotations, n_buckets: int, kind: str, block: int | None = None):
    """Bucket id per round and position, [R, L] int32 (no round offset needed: sorting
    is done per round, which equals the official global sort of offset codes).

    `block` positions are hashed per step of a sequential loop (None: HASH_BLOCK_CPU on
    CPU, all at once elsewhere). Why: XLA:CPU writes the [R, nb, L] projections to memory
    and reads them in two or three reductions; once they outgrow the cache (~8 MB, e.g.
    128x128, 3 rounds, 128 buckets) that is memory-bound, and 512-position blocks made
    the hashing 5-10x faster on a 2-core CPU (docs/performance.md). GPUs/TPUs reduce
    the whole array in one pass.
    """
    n_hashes, length = rotations.shape[1], q.shape[0]
    if n_buckets == 1:                               # L < K: a single bucket
        return jnp.zeros((n_hashes, length), jnp.int32)
    if block is None:
        block = HASH_BLOCK_CPU if target_platform.current() == "cpu" else length
    if block >= length:
        return _hash_block(q, rotations, kind)
    n_blocks = -(-length // block)
    q = jnp.pad(q, ((0, n_blocks * block - length), (0, 0))).reshape(n_blocks, block, -1)
    codes = jax.lax.map(lambda qb: _hash_block(qb, rotations, kind), q)   # [nB, R, block]
    return jnp.moveaxis(codes, 0, 1).reshape(n_hashes, -1)[:, :length]


def _hash_block(q, rotations, kind: str):
    # Buckets on the major axis: the reductions over them are vectorised over positions.
    # float32 also under bf16 (a small matmul next to the convolutions): buckets are a
    # discrete choice, and bf16-rounded rotations would move near-ties to other buckets.
    # HIGHEST: a TPU's default float32 matmul is one bf16 pass, which would move codes
    # off the ones the CPU and the official code compute (docs/precision.md).
    proj = jnp.einsum("lc,crb->rbl", q.astype(jnp.float32), rotations.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
    top = jnp.max(proj, axis=1)
    if kind == CROSS_POLYTOPE:
        # argmax over concat([proj, -proj]) without building the concatenation; ties go
        # to the first half, as argmax returns the first maximum.
        bottom = jnp.min(proj, axis=1)
        return jnp.where(top >= -bottom, _first_index_of(proj, top),
                         _first_index_of(proj, bottom) + proj.shape[1])
    return _first_index_of(proj, top)


def _first_index_of(proj, value):
    """argmax/argmin over axis 1 given the extreme `value` [R, L]: the first index where
    proj equals it (argmax's tie rule). Two plain reductions, which XLA:CPU vectorises;
    its variadic argmax reduction is several times slower."""
    iota = jax.lax.broadcasted_iota(jnp.int32, proj.shape, 1)
    return jnp.min(jnp.where(proj == value[:, None], iota, proj.shape[1]), axis=1)


def sort_order(codes, n_buckets: int, scatter_free: bool = False):
    """Stable per-round sort by bucket: order[r, i] = position of the i-th sorted item;
    undo is its inverse permutation (undo[r, order[r, i]] = i), written with a scatter,
    or with `scatter_free` found by a second sort (TPUs serialise scatters; a sort of
    R x L int32 pairs is cheap there).

    Sorting the unique keys code * L + position gives the stable order of the codes; XLA:CPU
    sorts one int32 array ~5x faster than (code, position) pairs with a stability rule.
    Keys must fit int32 (n_buckets * L < 2^31, i.e. up to ~4096x4096 maps at 128
    buckets); beyond that the pair sort is used.
    """
    n_rounds, length = codes.shape
    iota = jax.lax.broadcasted_iota(jnp.int32, codes.shape, 1)
    if n_buckets * length < 2**31:
        order = jnp.sort(codes * length + iota, axis=-1) % length
    else:
        order = jnp.argsort(codes, axis=-1, stable=True).astype(jnp.int32)
    if scatter_free:     # sort the pairs (order, i) by order: the i's are undo
        return order, jax.lax.sort((order, iota), dimension=1, num_keys=1)[1]
    rows = jnp.arange(n_rounds, dtype=jnp.int32)[:, None]
    undo = jnp.zeros_like(order).at[rows, order].set(iota, unique_indices=True)
    return order, undo


def chunk_indices(order, chunk_size: int):
    """Sorted positions padded to a multiple of K and cut into chunks, [R, M, K].

    Padding appends a copy of each round's last p sorted entries (p = (-L) % K), as the
    official code does (so those keys appear twice).
    """
    n_rounds, length = order.shape
    pad = (-length) % chunk_size
    idx = jnp.concatenate([order, order[:, length - pad:]], axis=1) if pad else order
    return idx.reshape(n_rounds, -1, chunk_size)


# --------------------------------------------------------------------------- attention

def normalize_keys(x, eps: float = KEY_EPS):
    """F.normalize(x, dim=-1, eps): x / max(||x||_2, eps), the norm in float32.

    sqrt'(0) is infinite, so a plain sqrt gives an all-zero key (frequent after GLA's
    ReLU) a NaN gradient (0 * inf); through the `where` its norm is still 0 but its
    gradient is finite, as in torch.
    """
    sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    nonzero = sq > 0
    norm = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)
    return (x / jnp.maximum(norm, eps).astype(x.dtype)).astype(x.dtype)


def _take_along(x, idx):
    """x[r, idx[r, l]] for in-range indices (x [R, P, ...], idx [R, L]), as one gather of
    whole rows of the flattened [R*P, ...] array (XLA:CPU copies rows; a gather with a
    batch dimension is several times slower there)."""
    n_rounds, padded = x.shape[:2]
    flat = idx + (jnp.arange(n_rounds, dtype=idx.dtype) * padded)[:, None]
    return x.reshape((n_rounds * padded,) + x.shape[2:]).at[flat].get(mode="promise_in_bounds")


@jax.custom_vjp
def _unsort(x, undo, order):
    """x [R, P, ...] in sorted-padded order -> [R, L, ...] in the original order."""
    return _take_along(x, undo)


def _unsort_fwd(x, undo, order):
    return _unsort(x, undo, order), (undo, order, x.shape[1])


def _unsort_bwd(res, g):
    """undo is a permutation of the first L sorted positions, so the adjoint of gathering
    with it is gathering with its inverse (`order`), plus zeros for the padded copies: a
    gather instead of autodiff's scatter-add (trax's permute_via_gather)."""
    undo, order, padded = res
    d = _take_along(g, order)
    pad = [(0, 0), (0, padded - d.shape[1])] + [(0, 0)] * (d.ndim - 2)
    return jnp.pad(d, pad), None, None


_unsort.defvjp(_unsort_fwd, _unsort_bwd)


def unsort_and_merge(o, lse, undo, order=None):
    """Drops the padded copies, restores the original order and merges the rounds with
    softmax_r(lse_r) weights (equal to one softmax over the union of the rounds' keys).
    order: the inverse of undo (sort_order's first output), for the gather backward."""
    if order is None:
        order = jnp.argsort(undo, axis=-1).astype(undo.dtype)
    o = _unsort(o, undo, order)                                        # [R, L, C]
    lse = _unsort(lse, undo, order)                                    # [R, L]
    w = jax.nn.softmax(lse, axis=0)
    return jnp.sum(o * w[..., None], axis=0)


def bucket_chunks(q, rotations, chunk_size: int, kind: str, max_buckets: int = MAX_BUCKETS,
                  scatter_free: bool = False):
    """Hash, sort and chunk one item q [L, Cq]: chunk ids [R, M, K] (sorted, padded
    positions), order and undo [R, L] (`sort_order`). Checks the rotation shape."""
    length = q.shape[0]
    n_buckets = num_buckets(length, chunk_size, max_buckets)
    expected = rotation_shape(kind, q.shape[-1], rotations.shape[1], n_buckets)
    if rotations.shape != expected:
        raise ValueError(f"rotations have shape {rotations.shape}, expected {expected} "
                         f"for L={length}, chunk_size={chunk_size}, kind={kind}")
    codes = jax.lax.stop_gradient(hash_codes(q, rotations, n_buckets, kind))
    order, undo = sort_order(codes, n_buckets, scatter_free)
    return chunk_indices(order, effective_chunk_size(length, chunk_size)), order, undo


def lsh_attention(q, v, rotations, chunk_size: int, kind: str, key_bias=None,
                  max_buckets: int = MAX_BUCKETS, chunks_per_step: int | None = None):
    """NLSA / GLA for one item: q [L,Cq] (hash and match embedding), v [L,C],
    rotations of `rotation_shape(kind, Cq, R, num_buckets(L, K))`, optional key_bias
    [L, >=K] (GLA's fc(f)). Returns the attention output [L, C] in v's dtype (before
    the residual). chunks_per_step: see `jaxsr.attention.chunked`."""
    bias = None if key_bias is None else key_bias[None]
    return batched_lsh_attention(q[None], v[None], rotations, chunk_size, kind, bias,
                                 max_buckets, chunks_per_step)[0]


def _pallas_kernels():
    try:
        from jaxsr.attention import kernels
    except ImportError as e:
        raise ValueError("attention_impl='pallas' needs the Pallas kernels "
                         f"(jaxsr.attention.kernels), which failed to import: {e}; use "
                         "config.model.attention_impl='xla'") from e
    return kernels


def _pallas_gather_rows(x, idx, weights=None):
    """The row-gather kernel for 32-bit tables; XLA's gather for 16-bit ones (the kernel
    loads single rows of 32-bit types only: `kernels.gather`)."""
    kernels = _pallas_kernels()
    if not kernels.gather.supports(x):
        return sorted_chunks.xla_gather_rows(x, idx, weights)
    return kernels.gather_rows(x, idx, weights)


def _pallas_gather_scalars(x, idx):
    """The scalar-gather kernel for float32 tables that fit VMEM, else XLA's gather."""
    kernels = _pallas_kernels()
    if not kernels.gather.scalars_supported(x):
        return sorted_chunks.xla_gather_scalars(x, idx)
    return kernels.gather_scalars(x, idx)


PALLAS_GATHERS = sorted_chunks.Gathers(_pallas_gather_rows, _pallas_gather_scalars)


def batched_lsh_attention(q, v, rotations, chunk_size: int, kind: str, key_bias=None,
                          max_buckets: int = MAX_BUCKETS, chunks_per_step: int | None = None,
                          impl: str = "auto"):
    """`lsh_attention` over a batch q [N,L,Cq], v [N,L,C] (key_bias [N,L,K] or None),
    one rotation tensor shared by all items, as in the official code.

    Hashing, sorting and the unsort are per item; the chunk attention runs on the
    batch's rows together, in the formulation `resolve_impl(impl)` picks: 'looped' on
    the stacked [N*L, .] tables (its loop steps hold a few chunks whatever N), 'sorted'
    and 'pallas' on [N*R, M, K, .] tables in sorted chunk order."""
    formulation = resolve_impl(impl)
    impl_lib.note_traced(formulation)
    scatter_free = formulation != "looped"
    ids, order, undo = jax.vmap(lambda q1: bucket_chunks(
        q1, rotations, chunk_size, kind, max_buckets, scatter_free))(q)  # [N,R,M,K], [N,R,L]
    if formulation == "looped":
        o, lse = _looped(q, v, key_bias, ids, chunks_per_step)
        return jax.vmap(unsort_and_merge)(o, lse, undo, order).astype(v.dtype)
    if formulation == "pallas":
        return _pallas_sorted(q, v, key_bias, ids, undo).astype(v.dtype)
    attend = functools.partial(sorted_chunks.sorted_chunk_attention,
                               chunks_per_step=chunks_per_step)
    gathers = sorted_chunks.XLA_GATHERS
    o, lse, positions = _sorted(q, v, key_bias, ids, undo, attend, gathers)
    return sorted_chunks.merge_rounds(o, lse, positions, undo, gathers).astype(v.dtype)


def _looped(q, v, key_bias, ids, chunks_per_step):
    """o [N, R, M*K, C], lse [N, R, M*K] by `chunked.attend_chunks` on stacked rows."""
    n, length = q.shape[:2]
    ids = ids + (jnp.arange(n, dtype=ids.dtype) * length)[:, None, None, None]

    def rows(x):
        return None if x is None else x.reshape((n * length,) + x.shape[2:])
    q_rows = rows(q)
    o, lse = chunked.attend_chunks(q_rows, normalize_keys(q_rows), rows(v),
                                   ids.reshape((-1,) + ids.shape[2:]), rows(key_bias),
                                   self_keys=key_bias is None, chunks_per_step=chunks_per_step)
    return o.reshape((n, -1) + o.shape[1:]), lse.reshape((n, -1) + lse.shape[1:])


def _sort_tables(q, v, key_bias, ids, undo, gathers):
    """q, v (and key_bias[..., :K]) gathered into sorted chunk order, [N*R, M, K, .] (one
    row gather per table for all rounds), and the sorted positions [N, R, M*K]."""
    n, length = q.shape[:2]
    n_rounds, n_chunks, size = ids.shape[1:]
    positions = ids.reshape(n, n_rounds, n_chunks * size)
    pad = n_chunks * size - length

    def sort(x):          # [N, L, D] -> [N*R, M, K, D]
        x = sorted_chunks.gather_sorted(x, positions, undo, pad, gathers)
        return x.reshape((n * n_rounds, n_chunks, size) + x.shape[3:])
    bias = None if key_bias is None else sort(key_bias[..., :size])
    return sort(q), sort(v), bias, positions


def _sorted(q, v, key_bias, ids, undo, attend, gathers):
    """o, lse as `_looped` from `attend` (the `sorted_chunk_attention` interface) on the
    sorted tables, and the sorted positions [N, R, M*K]."""
    n, n_rounds = ids.shape[:2]
    q_s, v_s, bias, positions = _sort_tables(q, v, key_bias, ids, undo, gathers)
    o, lse = attend(q_s, normalize_keys(q_s), v_s, bias, self_keys=key_bias is None)
    return (o.reshape(n, n_rounds, positions.shape[-1], -1),
            lse.reshape(n, n_rounds, positions.shape[-1]), positions)


def _pallas_sorted(q, v, key_bias, ids, undo):
    """The Pallas path: the gather kernels sort, the attention kernels (keys normalised
    inside, no key table) and the merge share one backward (`sorted_chunks.attend_and_merge`:
    no o or dlse in it)."""
    kernels = _pallas_kernels()
    q_s, v_s, bias, positions = _sort_tables(q, v, key_bias, ids, undo, PALLAS_GATHERS)
    attention = sorted_chunks.Attention(
        functools.partial(kernels.attention_forward, self_keys=key_bias is None),
        kernels.attention_backward)
    return sorted_chunks.attend_and_merge(q_s, v_s, bias, positions, undo, attention,
                                          PALLAS_GATHERS)
