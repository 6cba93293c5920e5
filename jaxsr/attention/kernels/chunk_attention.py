"""LSH chunk attention on sorted tables as Pallas kernels (forward, and a FlashAttention-style
backward that recomputes the probabilities from the saved log-sum-exp).

Tables are in sorted chunk order, [G, M, K, .] (G groups = items x hashing rounds, M chunks
of K rows). Chunk m attends to the 3K keys of chunks m, m-1, m+1 (mod M) of its group, the
official look-around (`jaxsr.attention.chunked.look_around`; M == 1: the chunk three times,
M == 2: the neighbour twice). GLA's key_bias [G, M, K, K] adds key_bias[g, m', j, i] to the
score of query slot i and key j of chunk m'.

Three kernels, each a grid over (group, chunk) whose BlockSpec index maps pick the
neighbouring chunks (m - 1 and m + 1 mod M), so no look-around copy or gather is made:
  _forward_kernel  per query chunk m: o [K, C] (float32, normalised) and lse [1, K]
  _dq_kernel       per query chunk m: dq, and delta = <do, o> - dlse for the next kernel
  _dkv_kernel      per key chunk j: dk, dv, dkey_bias, summed over the query chunks that
                   read it (j, j+1 and j-1 mod M: the transposed look-around), so every
                   gradient row is written once (no atomics, no scatter-add)
The key-chunk kernel works key-major (scores [keys, queries]): the bias block is then used
as stored and the per-query lse/delta are lane vectors [1, K], as they are stored.

Blocks span whole chunks and whole channel axes, which Mosaic's block rule (last two block
dimensions multiples of (8, 128) or equal to the array's) accepts for any K and C: K = 144
(NLSN) and tiny test channels compile unpadded, and Mosaic pads inside its vector registers.

Precision: matmul operands in the tables' dtype (bf16 under mixed precision) with float32
accumulation (preferred_element_type); scores, softmax and lse in float32.
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


def _neighbours(n_chunks: int):
    """Index maps of a [G, M, ...] table for the chunk itself, the one before and the one
    after it (mod M), over a (group, chunk) grid."""
    def at(shift):
        return lambda g, m: (g, (m + shift) % n_chunks, 0, 0)
    return at(0), at(-1), at(1)


def _chunk_spec(shape, index_map):
    """One chunk of a [G, M, rows, cols] table: the group and chunk axes squeezed."""
    return pl.BlockSpec((None, None) + tuple(shape[2:]), index_map)


def _scores(q, k, bias_t):
    """Scores [queries, keys] of one query chunk against one key chunk, float32."""
    s = _dot(q, k, _NT)
    return s if bias_t is None else s + bias_t


# --------------------------------------------------------------------------- forward

def _forward_kernel(*refs, self_keys: bool, has_bias: bool):
    q_ref, k_refs, v_refs = refs[0], refs[1:4], refs[4:7]
    bias_refs = refs[7:10] if has_bias else (None,) * 3
    o_ref, lse_ref = refs[-2:]
    q = q_ref[...]
    scores = [_scores(q, k[...], None if b is None else b[...].T.astype(F32))
              for k, b in zip(k_refs, bias_refs)]
    if self_keys:
        # k = normalize(q): s_ij <= |q_i| = s_ii (chunked module doc), no pass over scores.
        shift = jnp.sqrt(jnp.sum(jnp.square(q.astype(F32)), axis=-1, keepdims=True))
    else:
        shift = functools.reduce(jnp.maximum, [jnp.max(s, axis=-1, keepdims=True)
                                               for s in scores])
    weights = [jnp.exp(s - shift) for s in scores]
    z = sum(jnp.sum(e, axis=-1, keepdims=True) for e in weights)
    o = sum(_dot(e.astype(v.dtype), v[...], _NN) for e, v in zip(weights, v_refs))
    o_ref[...] = o / z          # cheaper than normalising the [K, 3K] weights
    lse_ref[...] = (shift + jnp.log(z)).T


def _forward(q, k, v, key_bias, self_keys: bool, interpret: bool):
    """o [G, M, K, C] float32 and lse [G, M, 1, K] float32."""
    n_groups, n_chunks, size, channels = v.shape
    maps = _neighbours(n_chunks)
    operands = [q] + [k] * 3 + [v] * 3 + ([key_bias] * 3 if key_bias is not None else [])
    specs = ([_chunk_spec(q.shape, maps[0])] + [_chunk_spec(k.shape, f) for f in maps]
             + [_chunk_spec(v.shape, f) for f in maps]
             + ([_chunk_spec(key_bias.shape, f) for f in maps] if key_bias is not None else []))
    kernel = functools.partial(_forward_kernel, self_keys=self_keys,
                               has_bias=key_bias is not None)
    out_shape = (jax.ShapeDtypeStruct(v.shape, F32),
                 jax.ShapeDtypeStruct((n_groups, n_chunks, 1, size), F32))
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(n_groups, n_chunks), in_specs=specs,
        out_specs=(_chunk_spec(v.shape, maps[0]), _chunk_spec(out_shape[1].shape, maps[0])),
        compiler_params=_parallel(), interpret=interpret, name="lsh_chunk_attention_fwd",
    )(*operands)


def _parallel():
    # Every grid point writes its own output block: both axes may be split over cores.
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))


# --------------------------------------------------------------------------- backward

def _dq_kernel(*refs, has_bias: bool):
    """dq of query chunk m and delta = <do_i, o_i> - dlse_i (the [K] term of ds)."""
    q_ref, k_refs, v_refs = refs[0], refs[1:4], refs[4:7]
    bias_refs = refs[7:10] if has_bias else (None,) * 3
    o_ref, lse_ref, do_ref, dlse_ref, dq_ref, delta_ref = refs[-6:]
    q, do = q_ref[...], do_ref[...]
    # sum_j p_ij dp_ij = <do_i, o_i>; d lse / d s = p, so dlse enters as a shift of dp.
    # Padded or unused rows have zero cotangents and so zero gradients.
    delta = jnp.sum(do * o_ref[...], axis=-1, keepdims=True) - dlse_ref[...].T
    lse = lse_ref[...].T
    do_low = do.astype(v_refs[0].dtype)
    dq = jnp.zeros(q.shape, F32)
    for k, v, b in zip(k_refs, v_refs, bias_refs):
        k = k[...]
        p = jnp.exp(_scores(q, k, None if b is None else b[...].T.astype(F32)) - lse)
        ds = p * (_dot(do_low, v[...], _NT) - delta)
        dq = dq + _dot(ds.astype(q.dtype), k, _NN)
    dq_ref[...] = dq.astype(dq_ref.dtype)
    delta_ref[...] = delta.T


def _dkv_kernel(*refs, has_bias: bool):
    """dk, dv (and dkey_bias) of key chunk j from the query chunks j, j-1, j+1 that read
    it, key-major: scores [keys, queries] take the bias block as stored."""
    k_ref, v_ref = refs[0], refs[1]
    bias_ref = refs[2] if has_bias else None
    start = 3 if has_bias else 2
    q_refs, do_refs = refs[start:start + 3], refs[start + 3:start + 6]
    lse_refs, delta_refs = refs[start + 6:start + 9], refs[start + 9:start + 12]
    dk_ref, dv_ref = refs[start + 12], refs[start + 13]
    k, v = k_ref[...], v_ref[...]
    bias = None if bias_ref is None else bias_ref[...].astype(F32)
    dk, dv = jnp.zeros(k.shape, F32), jnp.zeros(v.shape, F32)
    dbias = None if bias is None else jnp.zeros(bias.shape, F32)
    for q, do, lse, delta in zip(q_refs, do_refs, lse_refs, delta_refs):
        q, do_low = q[...], do[...].astype(v.dtype)
        p_t = jnp.exp(_scores(k, q, bias) - lse[...])                  # [keys, queries]
        ds_t = p_t * (_dot(v, do_low, _NT) - delta[...])
        dv = dv + _dot(p_t.astype(v.dtype), do_low, _NN)
        dk = dk + _dot(ds_t.astype(q.dtype), q, _NN)
        if dbias is not None:
            dbias = dbias + ds_t
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    if dbias is not None:
        refs[-1][...] = dbias.astype(refs[-1].dtype)


def _backward(q, k, v, key_bias, o, lse, do, dlse, interpret: bool):
    n_groups, n_chunks = v.shape[:2]
    own, before, after = maps = _neighbours(n_chunks)
    has_bias = key_bias is not None
    bias3 = [key_bias] * 3 if has_bias else []
    row = jax.ShapeDtypeStruct(lse.shape, F32)
    call = functools.partial(pl.pallas_call, grid=(n_groups, n_chunks),
                             compiler_params=_parallel(), interpret=interpret)
    dq, delta = call(
        functools.partial(_dq_kernel, has_bias=has_bias),
        out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype), row),
        in_specs=([_chunk_spec(q.shape, own)] + [_chunk_spec(k.shape, f) for f in maps]
                  + [_chunk_spec(v.shape, f) for f in maps]
                  + [_chunk_spec(key_bias.shape, f) for f in maps if has_bias]
                  + [_chunk_spec(x.shape, own) for x in (o, lse, do, dlse)]),
        out_specs=(_chunk_spec(q.shape, own), _chunk_spec(lse.shape, own)),
        name="lsh_chunk_attention_dq",
    )(q, *[k] * 3, *[v] * 3, *bias3, o, lse, do, dlse)
    # Key chunk j is read by query chunks j, j+1 and j-1: the same three index maps.
    outs = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
    if has_bias:
        outs.append(jax.ShapeDtypeStruct(key_bias.shape, key_bias.dtype))
    grads = call(
        functools.partial(_dkv_kernel, has_bias=has_bias), out_shape=tuple(outs),
        in_specs=([_chunk_spec(k.shape, own), _chunk_spec(v.shape, own)]
                  + ([_chunk_spec(key_bias.shape, own)] if has_bias else [])
                  + [_chunk_spec(x.shape, f) for x in (q, do, lse, delta) for f in maps]),
        out_specs=tuple(_chunk_spec(x.shape, own) for x in outs),
        name="lsh_chunk_attention_dkv",
    )(k, v, *([key_bias] if has_bias else []), *[q] * 3, *[do] * 3, *[lse] * 3, *[delta] * 3)
    return (dq,) + tuple(grads) + ((None,) if not has_bias else ())


# --------------------------------------------------------------------------- custom_vjp

@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def attention(q, k, v, key_bias, self_keys: bool, interpret: bool):
    """o [G, M, K, C] float32 and lse [G, M, 1, K] float32 on one device's groups."""
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
