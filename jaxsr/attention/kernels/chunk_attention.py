"""LSH chunk attention on sorted tables as Pallas kernels (forward, and a FlashAttention-style
backward that recomputes the probabilities from the saved log-sum-exp).

Tables are in sorted chunk order, [G, M, K, .] (G groups = items x hashing rounds, M chunks
of K rows). Chunk m attends to the 3K keys of chunks m, m-1, m+1 (mod M) of its group, the
official look-around (`jaxsr.attention.chunked.look_around`; M == 1: the chunk three times,
M == 2: the neighbour twice). GLA's key_bias [G, M, K, K] adds key_bias[g, m', j, i] to the
score of query slot i and key j of chunk m'.

Three kernels, each a grid over (group, chunk), chunks in order:
  _forward_kernel  per query chunk m: o [K, C] (float32, normalised) and lse [1, K]
  _dq_kernel       per query chunk m: dq, and delta = <do, o> - dlse for the next kernel
  _dkv_kernel      per key chunk j: dk, dv, dkey_bias, summed over the query chunks that
                   read it (j, j+1 and j-1 mod M: the transposed look-around), so every
                   gradient row is written once (no atomics, no scatter-add)
The key-chunk kernel works key-major (scores [keys, queries]): the bias block is then used
as stored and the per-query lse/delta are lane vectors [1, K], as they are stored.

Neighbour windows: a table whose chunks m-1, m, m+1 a step needs is read from HBM once per
chunk, not three times. Its only pipelined block is chunk m+1 (index map (m+1) mod M); the
step copies it into a 3-slot VMEM ring (slot = chunk number mod 3) that still holds chunks
m-1 and m. At m = 0 the ring is seeded with chunks M-1 and 0 from two more blocks whose
index maps are constant within a group, which Pallas fetches once per group. The chunk axis
therefore runs in order ('arbitrary'); groups are independent ('parallel').

Blocks span whole chunks and whole channel axes, which Mosaic's block rule (last two block
dimensions multiples of (8, 128) or equal to the array's) accepts for any K and C: K = 144
(NLSN) and tiny test channels compile unpadded (Mosaic pads inside its vector registers).

Precision: matmul operands in the tables' dtype (bf16 under mixed precision) with float32
accumulation (preferred_element_type); scores, softmax and lse in float32.

XLA's cost analysis cannot see inside a Mosaic call (it reports operand sizes, no FLOPs), so
each call passes a `pl.CostEstimate` counted from its matmuls and block reads (`_cost`).
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

F32 = jnp.float32
_NT = (((1,), (1,)), ((), ()))      # a @ b.T without materialising the transpose
_NN = (((1,), (0,)), ((), ()))      # a @ b


def _dot(a, b, dims):
    return jax.lax.dot_general(a, b, dims, preferred_element_type=F32)


def _scores(a, b, bias):
    """a @ b.T in float32 (+ bias): [queries, keys], or [keys, queries] key-major."""
    s = _dot(a, b, _NT)
    return s if bias is None else s + bias


# --------------------------------------------------------------------------- windows

def _own(g, m):
    return g, m, 0, 0


def _window_specs(shape, n_chunks: int):
    """Blocks of a windowed table: chunk m+1 (every step), M-1 and 0 (once per group)."""
    block = (None, None) + tuple(shape[2:])
    return [pl.BlockSpec(block, lambda g, m: (g, (m + 1) % n_chunks, 0, 0)),
            pl.BlockSpec(block, lambda g, m: (g, n_chunks - 1, 0, 0)),
            pl.BlockSpec(block, lambda g, m: (g, 0, 0, 0))]


def _window(refs, ring):
    """(chunk m, chunk m-1, chunk m+1) of a windowed table, through the VMEM ring."""
    after, last, first = refs
    m = pl.program_id(1)

    @pl.when(m == 0)
    def _seed():
        ring[2] = last[...]          # chunk -1 = M-1 (slot -1 mod 3)
        ring[0] = first[...]
    ring[(m + 1) % 3] = after[...]   # overwrites chunk m-2, no longer needed
    return ring[m % 3], ring[(m + 2) % 3], ring[(m + 1) % 3]


def _split(refs, n_own: int, n_windowed: int, n_out: int):
    """Kernel refs -> (own blocks, windows [(m, m-1, m+1) values], output refs)."""
    own, rest = refs[:n_own], refs[n_own:]
    groups = [rest[3 * i:3 * i + 3] for i in range(n_windowed)]
    outs = rest[3 * n_windowed:3 * n_windowed + n_out]
    rings = rest[3 * n_windowed + n_out:]
    return own, [_window(w, r) for w, r in zip(groups, rings)], outs


def _padded_bytes(shape, dtype) -> int:
    """Bytes of an array as TPU HBM stores it: the last two dimensions in (8, 128) tiles of
    32-bit words (16 sublanes for 16-bit types)."""
    itemsize = jnp.dtype(dtype).itemsize
    sub = 8 * 4 // itemsize
    *lead, rows, cols = (1,) + tuple(shape) if len(shape) < 2 else tuple(shape)
    size = -(-rows // sub) * sub * -(-cols // 128) * 128 * itemsize
    for d in lead:
        size *= d
    return size


def _cost(own, windowed, outs, matmul_flops: int, n_exp: int) -> pl.CostEstimate:
    """What one call moves and computes: own blocks and outputs once, windowed tables once
    per chunk plus the two seed chunks per group ((M + 2) / M of their size)."""
    n_chunks = own[0].shape[1]
    moved = sum(_padded_bytes(x.shape, x.dtype) for x in list(own) + list(outs))
    moved += sum(_padded_bytes(x.shape, x.dtype) * (n_chunks + 2) // n_chunks
                 for x in windowed)
    return pl.CostEstimate(flops=int(matmul_flops), transcendentals=int(n_exp),
                           bytes_accessed=int(moved))


def _call(kernel, own, windowed, out_shape, *, name, interpret, flops_per_pair, aliases=None):
    """pallas_call over the (group, chunk) grid of `own[0]` with neighbour windows
    (aliases: {own index: output index} written in place)."""
    n_groups, n_chunks, size = own[0].shape[:3]
    n_pairs = 3 * n_groups * n_chunks * size * size    # (query, key) score entries
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(n_groups, n_chunks),
        in_specs=([pl.BlockSpec((None, None) + x.shape[2:], _own) for x in own]
                  + [s for x in windowed for s in _window_specs(x.shape, n_chunks)]),
        out_specs=tuple(pl.BlockSpec((None, None) + x.shape[2:], _own) for x in out_shape),
        scratch_shapes=[pltpu.VMEM((3,) + x.shape[2:], x.dtype) for x in windowed],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret, name=name, input_output_aliases=aliases or {},
        cost_estimate=_cost(own, windowed, out_shape, flops_per_pair * n_pairs, n_pairs),
    )(*own, *[x for x in windowed for _ in range(3)])


def _lse_shape(v):
    return jax.ShapeDtypeStruct(v.shape[:2] + (1, v.shape[2]), F32)


# --------------------------------------------------------------------------- keys

KEY_EPS = 5e-5      # lsh.KEY_EPS: F.normalize's eps on the keys


def _norm(x):
    """|x| per row [K, 1] in float32, 0 for a zero row (no sqrt of 0 on the way)."""
    sq = jnp.sum(jnp.square(x.astype(F32)), axis=-1, keepdims=True)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _normalize(x):
    """lsh.normalize_keys on one chunk: x / max(|x|, eps), in x's dtype."""
    return (x / jnp.maximum(_norm(x), KEY_EPS).astype(x.dtype)).astype(x.dtype)


def _normalize_vjp(x, dk):
    """d/dx of <normalize(x), dk>: (dk - k <k, dk>) / |x| where |x| > eps, dk / eps below
    (the max picks the constant), float32."""
    norm = _norm(x)
    k = x.astype(F32) / jnp.maximum(norm, KEY_EPS)
    radial = jnp.where(norm > KEY_EPS, k * jnp.sum(k * dk, axis=-1, keepdims=True), 0.0)
    return (dk - radial) / jnp.maximum(norm, KEY_EPS)


# --------------------------------------------------------------------------- forward

def _forward_kernel(*refs, self_keys: bool, has_bias: bool, keys_from_q: bool):
    (q_ref,), windows, (o_ref, lse_ref) = _split(refs, 1, 3 if has_bias else 2, 2)
    q = q_ref[...]
    keys, values = windows[0], windows[1]
    if keys_from_q:          # the windowed table is q: its chunks normalised here
        keys = [_normalize(x) for x in keys]
    biases = [b.T.astype(F32) for b in windows[2]] if has_bias else [None] * 3
    scores = [_scores(q, k, b) for k, b in zip(keys, biases)]
    if self_keys:
        # k = normalize(q): s_ij <= |q_i| = s_ii (chunked module doc), no pass over scores.
        shift = jnp.sqrt(jnp.sum(jnp.square(q.astype(F32)), axis=-1, keepdims=True))
    else:
        shift = functools.reduce(jnp.maximum, [jnp.max(s, axis=-1, keepdims=True)
                                               for s in scores])
    weights = [jnp.exp(s - shift) for s in scores]
    z = sum(jnp.sum(e, axis=-1, keepdims=True) for e in weights)
    o = sum(_dot(e.astype(v.dtype), v, _NN) for e, v in zip(weights, values))
    o_ref[...] = o / z          # cheaper than normalising the [K, 3K] weights
    lse_ref[...] = (shift + jnp.log(z)).T


def _forward(q, k, v, key_bias, self_keys: bool, interpret: bool):
    """o [G, M, K, C] float32 and lse [G, M, 1, K] float32 (k None: normalize(q))."""
    windowed = [q if k is None else k, v] + ([key_bias] if key_bias is not None else [])
    kernel = functools.partial(_forward_kernel, self_keys=self_keys,
                               has_bias=key_bias is not None, keys_from_q=k is None)
    flops = 2 * (q.shape[3] + v.shape[3])
    return _call(kernel, [q], windowed, (jax.ShapeDtypeStruct(v.shape, F32), _lse_shape(v)),
                 name="lsh_chunk_attention_fwd", interpret=interpret, flops_per_pair=flops)


# --------------------------------------------------------------------------- backward

def _dq_kernel(*refs, has_bias: bool, keys_from_q: bool, given_delta: bool):
    """dq of query chunk m and delta = <do_i, o_i> - dlse_i (the [K] term of ds); with
    given_delta the caller's delta (`backward_from_delta`) instead of o and dlse."""
    n_windowed = 3 if has_bias else 2
    if given_delta:
        own, windows, (dq_ref,) = _split(refs, 4, n_windowed, 1)
        q, lse, do, delta = (r[...] for r in own)
        delta = delta.T
    else:
        own, windows, (dq_ref, delta_ref) = _split(refs, 5, n_windowed, 2)
        q, o, lse, do, dlse = (r[...] for r in own)
        # sum_j p_ij dp_ij = <do_i, o_i>; d lse / d s = p, so dlse enters as a shift of
        # dp. Unused rows have zero cotangents and so zero gradients.
        delta = jnp.sum(do * o, axis=-1, keepdims=True) - dlse.T
        delta_ref[...] = delta.T
    lse = lse.T
    keys, values = windows[0], windows[1]
    if keys_from_q:
        keys = [_normalize(x) for x in keys]
    biases = [b.T.astype(F32) for b in windows[2]] if has_bias else [None] * 3
    do_low = do.astype(values[0].dtype)
    dq = jnp.zeros(q.shape, F32)
    for k, v, b in zip(keys, values, biases):
        p = jnp.exp(_scores(q, k, b) - lse)
        ds = p * (_dot(do_low, v, _NT) - delta)
        dq = dq + _dot(ds.astype(q.dtype), k, _NN)
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(*refs, has_bias: bool, keys_from_q: bool):
    """dk, dv (and dkey_bias) of key chunk j from the query chunks j, j-1, j+1 that read
    it, key-major: scores [keys, queries] take the bias block as stored. keys_from_q: the
    keys are normalize(q) of the chunk, and the first output is dq (the dq kernel's, an
    own input written in place) plus the normalisation's gradient of dk."""
    n_out = 3 if has_bias else 2
    own, windows, outs = _split(refs, n_out + keys_from_q, 4, n_out)
    k, v = own[0][...], own[1][...]
    raw, k = (k, _normalize(k)) if keys_from_q else (None, k)
    bias = own[2][...].astype(F32) if has_bias else None
    dk, dv = jnp.zeros(k.shape, F32), jnp.zeros(v.shape, F32)
    dbias = jnp.zeros(bias.shape, F32) if has_bias else None
    for q, do, lse, delta in zip(*windows):
        do_low = do.astype(v.dtype)
        p_t = jnp.exp(_scores(k, q, bias) - lse)                       # [keys, queries]
        ds_t = p_t * (_dot(v, do_low, _NT) - delta)
        dv = dv + _dot(p_t.astype(v.dtype), do_low, _NN)
        dk = dk + _dot(ds_t.astype(q.dtype), q, _NN)
        if has_bias:
            dbias = dbias + ds_t
    if keys_from_q:
        dk = own[-1][...].astype(F32) + _normalize_vjp(raw, dk)
    for ref, grad in zip(outs, (dk, dv, dbias)):
        ref[...] = grad.astype(ref.dtype)


def backward_from_delta(q, k, v, key_bias, lse, do, delta, interpret: bool):
    """The backward given delta [G, M, 1, K] = <do, o> - dlse directly (a caller that knows
    it without o: `sorted_chunks.attend_and_merge`); lse [G, M, 1, K]."""
    return _backward(q, k, v, key_bias, None, lse, do, None, interpret, delta)


def _backward(q, k, v, key_bias, o, lse, do, dlse, interpret: bool, delta=None):
    """(dq, dk, dv, dkey_bias); k None: keys normalize(q), dk None and its gradient in dq."""
    has_bias, keys_from_q = key_bias is not None, k is None
    bias = [key_bias] if has_bias else []
    keys = q if keys_from_q else k
    cq, c = q.shape[3], v.shape[3]
    dq_kernel = functools.partial(_dq_kernel, has_bias=has_bias, keys_from_q=keys_from_q,
                                  given_delta=delta is not None)
    dq_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
    if delta is None:
        dq, delta = _call(dq_kernel, [q, o, lse, do, dlse], [keys, v] + bias,
                          (dq_shape, _lse_shape(v)), name="lsh_chunk_attention_dq",
                          interpret=interpret, flops_per_pair=2 * (2 * cq + c))
    else:
        (dq,) = _call(dq_kernel, [q, lse, do, delta], [keys, v] + bias, (dq_shape,),
                      name="lsh_chunk_attention_dq", interpret=interpret,
                      flops_per_pair=2 * (2 * cq + c))
    # Key chunk j is read by query chunks j, j+1 and j-1: the same three-chunk window.
    grads = _call(functools.partial(_dkv_kernel, has_bias=has_bias,
                                    keys_from_q=keys_from_q),
                  [keys, v] + bias + ([dq] if keys_from_q else []), [q, do, lse, delta],
                  tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in [keys, v] + bias),
                  name="lsh_chunk_attention_dkv", interpret=interpret,
                  flops_per_pair=2 * (2 * cq + 2 * c),
                  aliases={len(bias) + 2: 0} if keys_from_q else None)
    grads = tuple(grads) + ((None,) if not has_bias else ())
    return (grads[0], None) + grads[1:] if keys_from_q else (dq,) + grads


# --------------------------------------------------------------------------- custom_vjp

@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def attention(q, k, v, key_bias, self_keys: bool, interpret: bool):
    """o [G, M, K, C] float32 and lse [G, M, 1, K] float32 on one device's groups; k None:
    the keys are normalize(q) (lsh.normalize_keys), computed in the kernels, so that no
    key table is written or read and dq includes the keys' gradient."""
    return _forward(q, k, v, key_bias, self_keys, interpret)


def _attention_fwd(q, k, v, key_bias, self_keys, interpret):
    o, lse = _forward(q, k, v, key_bias, self_keys, interpret)
    return (o, lse), (q, k, v, key_bias, o, lse)


def _attention_bwd(self_keys, interpret, res, cotangents):
    del self_keys      # the shift cancels in p = exp(s - lse)
    q, k, v, key_bias, o, lse = res
    do, dlse = cotangents
    return _backward(q, k, v, key_bias, o, lse, do.astype(F32), dlse.astype(F32), interpret)


attention.defvjp(_attention_fwd, _attention_bwd)
