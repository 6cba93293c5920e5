"""Chunked LSH attention (NLSN's NLSA, DLSN's GLA) as small pure functions.

One feature map (no batch axis) of length L = H*W, flattened row-major (l = h*W + w, as
torch's `.view(N, C, H*W)`), with R hashing rounds, chunk size K and nb buckets:

  hash_codes          q [L,Cq], rotations      -> bucket ids [R, L]
  sort_order          bucket ids               -> order [R, L] (stable), undo [R, L]
  chunk_indices       order                    -> padded sorted positions [R, M, K]
  look_around         [R,M,K,...]              -> [R,M,3K,...] (chunks m, m-1, m+1)
  attend_chunks       q, keys, v, ids (+ bias) -> sorted outputs [R,M*K,C], lse [R,M*K]
  unsort_and_merge    outputs, lse, undo       -> [L, C]
  lsh_attention       all of the above; `batched_lsh_attention` vmaps it over N items
                      with one rotation tensor shared by the batch (as the official code).

Everything follows the official PyTorch code (architectures.md 2.3 / 3.3), including the
duplicated keys it creates: the tail-copy padding to a multiple of K, the wrap-around
look-one-back/look-one-forward, and a chunk that sees itself three times when there is
only one chunk. The only deviation is where the official code crashes: for L < K it has
zero buckets; here the chunk shrinks to L, so that case is exact dense attention.

Memory is O(R * L * 3K): the L x L score matrix is never formed; each embedding is
gathered once into sorted order (an index gather, no copies per padding step) and the
look-around is a concatenation of rolled chunks.
"""
import jax
import jax.numpy as jnp

MAX_BUCKETS = 128   # official cap on the number of buckets
KEY_EPS = 5e-5      # F.normalize eps used on the keys

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
    """Draws the rotation tensor of `rotation_shape(kind, ...)` from `key`."""
    shape = rotation_shape(kind, dim, n_hashes, n_buckets)
    if kind == CROSS_POLYTOPE:
        return jax.random.normal(key, shape, dtype)
    keys = jax.random.split(key, n_hashes)          # one orthogonal matrix per round
    mats = jax.vmap(lambda k: orthogonal(k, dim, n_buckets, dtype))(keys)   # [R, Cq, nb]
    return jnp.transpose(mats, (1, 0, 2))


# --------------------------------------------------------------------------- hashing

def hash_codes(q, rotations, n_buckets: int, kind: str):
    """Bucket id per round and position, [R, L] int32 (no round offset needed: sorting
    is done per round, which equals the official global sort of offset codes)."""
    n_hashes = rotations.shape[1]
    if n_buckets == 1:                               # L < K: a single bucket
        return jnp.zeros((n_hashes, q.shape[0]), jnp.int32)
    proj = jnp.einsum("lc,crb->rlb", q, rotations.astype(q.dtype),
                      preferred_element_type=jnp.float32)
    if kind == CROSS_POLYTOPE:
        proj = jnp.concatenate([proj, -proj], axis=-1)
    return jnp.argmax(proj, axis=-1).astype(jnp.int32)


def sort_order(codes):
    """Stable per-round sort by bucket: order[r, i] = position of the i-th sorted item;
    undo is its inverse permutation (undo[r, order[r, i]] = i)."""
    order = jnp.argsort(codes, axis=-1, stable=True).astype(jnp.int32)
    n_rounds, length = codes.shape
    iota = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (n_rounds, length))
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
    """F.normalize(x, dim=-1, eps): x / max(||x||_2, eps)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True))
    return (x / jnp.maximum(norm, eps).astype(x.dtype)).astype(x.dtype)


def _take_rows(x, idx):
    """x[idx] for row indices known to be in range (no clamping/fill code)."""
    return x.at[idx].get(mode="promise_in_bounds")


def attend_chunks(q, k, v, chunk_ids, key_bias=None):
    """Per-chunk softmax attention with scores and softmax in float32.

    q [L,Cq] raw queries, k [L,Cq] normalised keys, v [L,C], chunk_ids [R,M,K] (sorted,
    padded positions); key_bias [L, >=K] (DLSN's learnable score: s[i, j] += key_bias[key
    j, query slot i]) or None. Each tensor is gathered once into sorted order and the
    look-around is built from rolled chunks (cheaper than gathering 3K rows per chunk,
    also in the backward pass, where the gather becomes a scatter-add).
    Returns o [R, M*K, C] and lse [R, M*K] in sorted-padded order.
    """
    n_rounds, _, chunk = chunk_ids.shape
    qs = _take_rows(q, chunk_ids)                                # [R, M, K, Cq]
    ks = look_around(_take_rows(k, chunk_ids))                   # [R, M, 3K, Cq]
    vs = look_around(_take_rows(v, chunk_ids))                   # [R, M, 3K, C]
    s = jnp.einsum("rmic,rmjc->rmij", qs, ks, preferred_element_type=jnp.float32)
    if key_bias is not None:
        g = look_around(_take_rows(key_bias[:, :chunk], chunk_ids))   # [R, M, 3K, K]
        s = s + jnp.swapaxes(g, -1, -2).astype(jnp.float32)
    # softmax and logsumexp as two reductions: the fused form exp(s - lse) is equal but
    # makes XLA:CPU compile the forward pass ~10x slower (1.5 s vs 0.15 s, tiny shapes).
    p = jax.nn.softmax(s, axis=-1)
    lse = jax.nn.logsumexp(s, axis=-1)
    o = jnp.einsum("rmij,rmjc->rmic", p.astype(v.dtype), vs,
                   preferred_element_type=jnp.float32)
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
    order, undo = sort_order(codes)
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
