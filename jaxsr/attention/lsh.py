"""Chunked LSH attention (NLSN's NLSA, DLSN's GLA) as small pure functions.

One feature map (no batch axis) of length L = H*W, flattened row-major (l = h*W + w, as
torch's `.view(N, C, H*W)`), with R hashing rounds, chunk size K and nb buckets:

  hash_codes          q [L,Cq], rotations      -> bucket ids [R, L]
  sort_order          bucket ids, nb           -> order [R, L] (stable), undo [R, L]
  chunk_indices       order                    -> padded sorted positions [R, M, K]
  look_around         [R,M,K,...]              -> [R,M,3K,...] (chunks m, m-1, m+1)
  attend_chunks       q, keys, v, ids (+ bias) -> sorted outputs [R,M*K,C], lse [R,M*K]
  unsort_and_merge    outputs, lse, undo       -> [L, C]
  lsh_attention       all of the above; `batched_lsh_attention` vmaps it over N items
                      with one rotation tensor shared by the batch (as the official code).

Rotations: `sample_rotations` (from a JAX key: training), `fixed_rotations` (NumPy, from a
seed and a layer name: deterministic evaluation), `orthogonal_from_gaussian` (torch's
`orthogonal_` rule for Super-Bit LSH). The chunk attention has an explicit backward pass
(`jax.custom_vjp`): the gradients of autodiff, but it keeps only the L-row inputs and the
probabilities (not their 3x look-around copies): at 128x128, C=64, K=144, R=4 it needed
316 instead of 566 MB of XLA scratch and compiled faster on CPU.

Everything follows the official PyTorch code (architectures.md 2.3 / 3.3), including the
duplicated keys it creates: the tail-copy padding to a multiple of K, the wrap-around
look-one-back/look-one-forward, and a chunk that sees itself three times when there is
only one chunk. The only deviation is where the official code crashes: for L < K it has
zero buckets; here the chunk shrinks to L, so that case is exact dense attention.

Memory is O(R * L * 3K): the L x L score matrix is never formed; each embedding is
gathered once into sorted order (an index gather, no copies per padding step) and the
look-around is a concatenation of rolled chunks.
"""
import zlib

import jax
import jax.numpy as jnp
import numpy as np

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
        block = HASH_BLOCK_CPU if jax.default_backend() == "cpu" else length
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
    proj = jnp.einsum("lc,crb->rbl", q.astype(jnp.float32), rotations.astype(jnp.float32))
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


def sort_order(codes, n_buckets: int):
    """Stable per-round sort by bucket: order[r, i] = position of the i-th sorted item;
    undo is its inverse permutation (undo[r, order[r, i]] = i).

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


def look_around(x):
    """[R, M, K, ...] -> [R, M, 3K, ...]: chunk m followed by chunks m-1 and m+1 (mod M,
    within a round), the official `add_adjacent_buckets`."""
    return jnp.concatenate([x, jnp.roll(x, 1, axis=1), jnp.roll(x, -1, axis=1)], axis=2)


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


def _take_rows(x, idx):
    """x[idx] for row indices known to be in range (no clamping/fill code)."""
    return x.at[idx].get(mode="promise_in_bounds")


def look_around_transpose(d):
    """Adjoint of `look_around`: [R, M, 3K, ...] -> [R, M, K, ...]."""
    k = d.shape[2] // 3
    return (d[:, :, :k] + jnp.roll(d[:, :, k:2 * k], -1, axis=1)
            + jnp.roll(d[:, :, 2 * k:], 1, axis=1))


def _scatter_rows(d, ids, length):
    """Adjoint of `_take_rows`: sums the rows of d [R, M, K, ...] into [L, ...]."""
    out = jnp.zeros((length,) + d.shape[3:], jnp.float32)
    return out.at[ids].add(d.astype(jnp.float32), mode="promise_in_bounds")


def _gather_chunks(q, k, v, ids, key_bias):
    qs = _take_rows(q, ids)                                      # [R, M, K, Cq]
    ks = look_around(_take_rows(k, ids))                         # [R, M, 3K, Cq]
    vs = look_around(_take_rows(v, ids))                         # [R, M, 3K, C]
    g = None
    if key_bias is not None:                                     # [R, M, 3K, K]
        g = look_around(_take_rows(key_bias[:, :ids.shape[-1]], ids))
    return qs, ks, vs, g


def _attend_forward(q, k, v, ids, key_bias):
    qs, ks, vs, g = _gather_chunks(q, k, v, ids, key_bias)
    s = jnp.einsum("rmic,rmjc->rmij", qs, ks, preferred_element_type=jnp.float32)
    if g is not None:
        s = s + jnp.swapaxes(g, -1, -2).astype(jnp.float32)
    # softmax and logsumexp as two reductions: the fused form exp(s - lse) is equal but
    # makes XLA:CPU compile the forward pass ~3x slower.
    p = jax.nn.softmax(s, axis=-1)
    lse = jax.nn.logsumexp(s, axis=-1)
    o = jnp.einsum("rmij,rmjc->rmic", p.astype(v.dtype), vs,
                   preferred_element_type=jnp.float32)
    return o, lse, p


@jax.custom_vjp
def _attend(q, k, v, ids, key_bias):
    o, lse, _ = _attend_forward(q, k, v, ids, key_bias)
    return o, lse


def _attend_fwd(q, k, v, ids, key_bias):
    o, lse, p = _attend_forward(q, k, v, ids, key_bias)
    # Residuals: the L-row inputs (re-gathered in the backward pass, cheaper to keep
    # than their 3x look-around copies) and the probabilities p [R, M, K, 3K].
    return (o, lse), (q, k, v, ids, key_bias, p)


def _attend_bwd(res, cotangents):
    """Explicit softmax-attention backward; XLA:CPU compiles it ~2x faster than the
    autodiff of the forward and it avoids differentiating through the gathers."""
    q, k, v, ids, key_bias, p = res
    do, dlse = cotangents
    length = q.shape[0]
    qs, ks, vs, _ = _gather_chunks(q, k, v, ids, None)
    # The matmuls take operands in the inputs' dtype (bf16 under mixed precision, as in
    # the forward pass) and accumulate in float32; the softmax algebra stays float32.
    # For float32 inputs every cast below is the identity.
    do = do.astype(v.dtype)
    f32 = jnp.float32
    dvs = jnp.einsum("rmij,rmic->rmjc", p.astype(v.dtype), do, preferred_element_type=f32)
    dp = jnp.einsum("rmic,rmjc->rmij", do, vs, preferred_element_type=f32)
    # d lse / d s = p, so the lse cotangent enters like a shift of dp.
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True) + dlse[..., None])
    ds_low = ds.astype(q.dtype)
    dqs = jnp.einsum("rmij,rmjc->rmic", ds_low, ks, preferred_element_type=f32)
    dks = jnp.einsum("rmij,rmic->rmjc", ds_low, qs, preferred_element_type=f32)
    dq = _scatter_rows(dqs, ids, length).astype(q.dtype)
    dk = _scatter_rows(look_around_transpose(dks), ids, length).astype(k.dtype)
    dv = _scatter_rows(look_around_transpose(dvs), ids, length).astype(v.dtype)
    dbias = None
    if key_bias is not None:
        dg = _scatter_rows(look_around_transpose(jnp.swapaxes(ds, -1, -2)), ids, length)
        dbias = jnp.pad(dg, ((0, 0), (0, key_bias.shape[1] - ids.shape[-1])))
        dbias = dbias.astype(key_bias.dtype)
    return dq, dk, dv, np.zeros(ids.shape, jax.dtypes.float0), dbias


_attend.defvjp(_attend_fwd, _attend_bwd)


def attend_chunks(q, k, v, chunk_ids, key_bias=None):
    """Per-chunk softmax attention with scores and softmax in float32.

    q [L,Cq] raw queries, k [L,Cq] normalised keys, v [L,C], chunk_ids [R,M,K] (sorted,
    padded positions); key_bias [L, >=K] (DLSN's learnable score: s[i, j] += key_bias[key
    j, query slot i]) or None. Each tensor is gathered once into sorted order and the
    look-around is built from rolled chunks (cheaper than gathering 3K rows per chunk).
    Returns o [R, M*K, C] (float32) and lse [R, M*K] in sorted-padded order.
    """
    n_rounds = chunk_ids.shape[0]
    o, lse = _attend(q, k, v, chunk_ids, key_bias)
    return o.reshape(n_rounds, -1, v.shape[-1]), lse.reshape(n_rounds, -1)


def unsort_and_merge(o, lse, undo):
    """Drops the padded copies, restores the original order and merges the rounds with
    softmax_r(lse_r) weights (equal to one softmax over the union of the rounds' keys)."""
    length = undo.shape[1]
    o = jnp.take_along_axis(o[:, :length], undo[..., None], axis=1)    # [R, L, C]
    lse = jnp.take_along_axis(lse[:, :length], undo, axis=1)           # [R, L]
    w = jax.nn.softmax(lse, axis=0)
    return jnp.sum(o * w[..., None], axis=0)


def lsh_attention(q, v, rotations, chunk_size: int, kind: str, key_bias=None,
                  max_buckets: int = MAX_BUCKETS):
    """NLSA / GLA for one item: q [L,Cq] (hash and match embedding), v [L,C],
    rotations of `rotation_shape(kind, Cq, R, num_buckets(L, K))`, optional key_bias
    [L, >=K] (GLA's fc(f)). Returns the attention output [L, C] in v's dtype (before
    the residual)."""
    length = q.shape[0]
    n_buckets = num_buckets(length, chunk_size, max_buckets)
    expected = rotation_shape(kind, q.shape[-1], rotations.shape[1], n_buckets)
    if rotations.shape != expected:
        raise ValueError(f"rotations have shape {rotations.shape}, expected {expected} "
                         f"for L={length}, chunk_size={chunk_size}, kind={kind}")
    codes = jax.lax.stop_gradient(hash_codes(q, rotations, n_buckets, kind))
    order, undo = sort_order(codes, n_buckets)
    chunk_ids = chunk_indices(order, effective_chunk_size(length, chunk_size))
    o, lse = attend_chunks(q, normalize_keys(q), v, chunk_ids, key_bias)
    return unsort_and_merge(o, lse, undo).astype(v.dtype)


def batched_lsh_attention(q, v, rotations, chunk_size: int, kind: str, key_bias=None,
                          max_buckets: int = MAX_BUCKETS):
    """`lsh_attention` over a batch q [N,L,Cq], v [N,L,C] (key_bias [N,L,K] or None),
    one rotation tensor shared by all items, as in the official code."""
    def one(q1, v1, b1):
        return lsh_attention(q1, v1, rotations, chunk_size, kind, b1, max_buckets)
    return jax.vmap(one)(q, v, key_bias)
