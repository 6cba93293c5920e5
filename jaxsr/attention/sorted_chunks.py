"""Scatter-free LSH chunk attention on tables in sorted chunk order (the XLA path for TPUs
and GPUs; `jaxsr.attention.lsh` picks it, docs/attention.md).

Today's path (`jaxsr.attention.chunked`) gathers the 3K key rows of every chunk straight
from the [L, .] tables and adds the backward's gradients back into them with
scatter-adds. A TPU runs a scatter with data-dependent indices as a serialised loop
(openxla/xla#12982), so this path moves data only with gathers, rolls and adds:

  gather_sorted        [N, L, D] -> [N, R, M*K, D]: one gather per table and all rounds,
                       positions from `lsh.chunk_indices` (the tail-copy padding included);
                       backward: one gather by the inverse permutation `undo` (plus the
                       padded copies' rows), summed over the rounds
  merge_rounds         sorted o, lse -> [N, L, C]: unsort and the softmax merge of the
                       rounds as one summing gather; backward: gathers in sorted order
  sorted_chunk_attention
                       [G, M, K, .] sorted tables -> o [G, M, K, C], lse [G, M, K]: chunk m
                       attends to chunks m, m-1, m+1 (mod M) of its group, the look-around
                       as rolls of the chunk axis; backward recomputes the probabilities
                       from the lse (FlashAttention) and folds the look-around's gradient
                       back with rolls (its transpose)

`sorted_chunk_attention` is the interface the Pallas kernels implement too
(`jaxsr.attention.kernels.sorted_chunk_attention`): same arguments, same results; likewise
`xla_gather_rows` and `kernels.gather_rows`, the row gather the permutations use.
Scores, softmax and lse are float32; matmuls take the operands' dtype (bf16 under mixed
precision) and accumulate in float32, as in `chunked`.
"""
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxsr.attention import chunked

F32 = jnp.float32


# --------------------------------------------------------------------------- the gather

def _rows(x):
    return x.reshape((-1,) + x.shape[2:])


def xla_gather_rows(x, idx, weights=None):
    """out[n, t] = sum_r weights[n, r, t] * x[n, idx[n, r, t]] (x [N, S, D], idx and
    weights [N, R, T]; weights None: 1; R == 1 without weights: the rows unchanged), the
    sum in float32. The XLA form of `jaxsr.attention.kernels.gather_rows`: per-item
    gathers (vmap, a batch dimension), so that a batch sharded over chips stays sharded
    (a gather of rows of the flattened [N*S, D] table makes the SPMD partitioner
    all-gather the table over the chips first)."""
    g = jax.vmap(_take_rows)(x, idx)                                   # [N, R, T, D]
    if weights is None and idx.shape[1] == 1:
        return g[:, 0]
    g = g.astype(F32)
    if weights is not None:
        g = g * weights[..., None].astype(F32)
    return jnp.sum(g, axis=1).astype(x.dtype)


def _take_rows(x, idx):
    return x.at[idx].get(mode="promise_in_bounds")


def xla_gather_scalars(x, idx):
    """x [N, S], idx [N, ...] -> x[n, idx[n, ...]] (XLA; `kernels.gather_scalars`)."""
    return jax.vmap(_take_rows)(x, idx)


class Gathers(NamedTuple):
    """The two gathers the permutations use: `rows` as `xla_gather_rows`, `scalars` as
    `xla_gather_scalars` (the Pallas path passes its kernels')."""
    rows: Callable
    scalars: Callable


XLA_GATHERS = Gathers(xla_gather_rows, xla_gather_scalars)


def _round_offsets(idx, size: int):
    """idx [N, R, T] into one round's [size] rows -> into the [R * size] rows of all."""
    return idx + (jnp.arange(idx.shape[1], dtype=idx.dtype) * size)[:, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def gather_sorted(x, positions, undo, pad: int, gathers=XLA_GATHERS):
    """x [N, L, D] -> [N, R, P, D] with out[n, r, p] = x[n, positions[n, r, p]].

    positions [N, R, P] (P = L + pad): each round's sorted order followed by a copy of
    its last `pad` entries (`lsh.chunk_indices`); undo [N, R, L] the inverse of the
    first L (undo[n, r, positions[n, r, i]] = i for i < L). gathers: `XLA_GATHERS` or
    the Pallas kernels' (`Gathers`)."""
    n, n_rounds, padded = positions.shape
    rows = gathers.rows(x, positions.reshape(n, 1, n_rounds * padded))
    return rows.reshape((n, n_rounds, padded) + x.shape[2:])


def _gather_sorted_fwd(x, positions, undo, pad, gathers):
    return gather_sorted(x, positions, undo, pad, gathers), (positions, undo)


def _gather_sorted_bwd(pad, gathers, res, g):
    """dx[n, l] = sum_r g[n, r, undo[n, r, l]] (+ g at undo + pad for the entries whose
    copy is in the padding): one summing gather, where autodiff would scatter-add."""
    positions, undo = res
    n, n_rounds, padded = g.shape[:3]
    length = undo.shape[-1]
    idx, weights = _round_offsets(undo, padded), None
    if pad:
        copied = undo >= length - pad                 # sorted slots L-pad.. reappear at +pad
        idx = jnp.concatenate([idx, jnp.where(copied, idx + pad, idx)], axis=1)
        weights = jnp.concatenate([jnp.ones(copied.shape, F32), copied.astype(F32)], axis=1)
    dx = gathers.rows(g.reshape((n, n_rounds * padded) + g.shape[3:]), idx, weights)
    return dx, None, None


gather_sorted.defvjp(_gather_sorted_fwd, _gather_sorted_bwd)


# --------------------------------------------------------------------------- round merge

@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def merge_rounds(o, lse, positions, undo, gathers=XLA_GATHERS):
    """The attention output [N, L, C] from the rounds' sorted outputs o [N, R, P, C] and
    lse [N, R, P]: out[l] = sum_r softmax_r(lse_r(l)) o_r(l), where o_r(l) = o[r,
    undo[r, l]] (the padded copies are dropped), as `lsh.unsort_and_merge`, in one
    summing gather. Backward, in sorted order, by gathers: do[r, p] = w_r(l) dout[l] and
    dlse[r, p] = w_r(l) (<o[r, p], dout[l]> - <out[l], dout[l]>) at l = positions[r, p]
    (zero in the padding), the softmax's derivative."""
    return _merge(o, lse, undo, gathers)[0]


def _merge(o, lse, undo, gathers):
    n, n_rounds, padded = lse.shape
    idx = _round_offsets(undo, padded)                                 # [N, R, L]
    lse_u = gathers.scalars(lse.reshape(n, -1), idx.reshape(n, -1)).reshape(idx.shape)
    weights = jax.nn.softmax(lse_u.astype(F32), axis=1)
    return gathers.rows(o.reshape((n, n_rounds * padded) + o.shape[3:]), idx, weights), \
        weights


def _merge_fwd(o, lse, positions, undo, gathers):
    out, weights = _merge(o, lse, undo, gathers)
    return out, (o, positions, weights, out)


def _merge_bwd(gathers, res, dout):
    o, positions, weights, out = res
    do, w_s, mean_s = _sorted_cotangent(gathers, positions, weights, out, dout, o.dtype)
    dlse = jnp.sum(do.astype(F32) * o.astype(F32), axis=-1) - w_s * mean_s
    return do, dlse, None, None


def _sorted_cotangent(gathers, positions, weights, out, dout, dtype):
    """do [N, R, P, C] = w_r(l) dout[l] at l = positions[r, p] (0 in the padding), and
    w_s = w_r(l), mean_s = <out[l], dout[l]> there, [N, R, P]."""
    n, n_rounds, padded = positions.shape
    length = weights.shape[-1]
    valid = jnp.arange(padded) < length
    w_s = gathers.scalars(weights.reshape(n, -1),
                          _round_offsets(positions, length).reshape(n, -1))
    w_s = jnp.where(valid, w_s.reshape(positions.shape), 0.0)          # [N, R, P]
    do = gathers.rows(dout.astype(dtype), positions.reshape(n, 1, -1), w_s.reshape(n, 1, -1))
    mean = jnp.sum(out.astype(F32) * dout.astype(F32), axis=-1)       # [N, L]
    mean_s = gathers.scalars(mean, positions.reshape(n, -1)).reshape(positions.shape)
    return do.reshape(positions.shape + (-1,)), w_s, mean_s


merge_rounds.defvjp(_merge_fwd, _merge_bwd)


class Attention(NamedTuple):
    """A chunk attention split for `attend_and_merge` (the Pallas kernels' entry points):
    forward(q, v, key_bias) -> o [G, M, K, C], lse [G, M, K] with keys normalize(q);
    backward(q, v, key_bias, lse, do, delta) -> dq, dv, dkey_bias, where delta =
    <do, o> - dlse [G, M, K] is the softmax backward's per-row term."""
    forward: Callable
    backward: Callable


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def attend_and_merge(q, v, key_bias, positions, undo, attention, gathers=XLA_GATHERS):
    """merge_rounds(attention.forward(q, v, key_bias)) for sorted tables q, v [G, M, K, .]
    (G = N*R, M*K = P) -> [N, L, C], with one backward for both: by merge_rounds' doc,
    <do, o> = w_s a_s and dlse = w_s (a_s - mean_s), so the attention's delta is just
    w_s * mean_s, and neither o (not kept) nor dlse is formed."""
    return _attend_merge_fwd(q, v, key_bias, positions, undo, attention, gathers)[0]


def _attend_merge_fwd(q, v, key_bias, positions, undo, attention, gathers):
    o, lse = attention.forward(q, v, key_bias)
    out, weights = _merge(o.reshape(positions.shape + o.shape[3:]),
                          lse.reshape(positions.shape), undo, gathers)
    return out, (q, v, key_bias, lse, positions, weights, out)


def _attend_merge_bwd(attention, gathers, res, dout):
    q, v, key_bias, lse, positions, weights, out = res
    do, w_s, mean_s = _sorted_cotangent(gathers, positions, weights, out, dout, F32)
    dq, dv, db = attention.backward(q, v, key_bias, lse, do.reshape(v.shape[:3] + (-1,)),
                                    (w_s * mean_s).reshape(lse.shape))
    return dq, dv, db, None, None


attend_and_merge.defvjp(_attend_merge_fwd, _attend_merge_bwd)


# --------------------------------------------------------------------------- look-around

def look_around_transpose(x3):
    """The adjoint of `chunked.look_around` on [G, M, 3K, ...] -> [G, M, K, ...]: block 1
    of chunk m came from chunk m-1, block 2 from chunk m+1 (rolls, no scatter)."""
    size = x3.shape[2] // 3
    return (x3[:, :, :size] + jnp.roll(x3[:, :, size:2 * size], -1, axis=1)
            + jnp.roll(x3[:, :, 2 * size:], 1, axis=1))


# --------------------------------------------------------------------------- attention

def _scores(q, k3, b3):
    """[B, K, 3K] float32 scores of chunks q [B, K, Cq] against their keys k3 [B, 3K, Cq];
    plus b3[b, key j, query slot i] when given (GLA)."""
    s = jnp.einsum("bic,bjc->bij", q, k3, preferred_element_type=F32)
    if b3 is not None:
        s = s + jnp.swapaxes(b3, -1, -2).astype(F32)
    return s


def _step_forward(self_keys, chunk):
    q, k3, v3, b3 = chunk
    s = _scores(q, k3, b3)
    if self_keys:       # s_ij <= |q_i| = s_ii (module doc of `chunked`)
        shift = jnp.sqrt(jnp.sum(jnp.square(q.astype(F32)), axis=-1))
    else:
        shift = jnp.max(s, axis=-1)
    e = jnp.exp(s - shift[..., None])
    z = jnp.sum(e, axis=-1)
    o = jnp.einsum("bij,bjc->bic", e.astype(v3.dtype), v3,
                   preferred_element_type=F32) / z[..., None]
    return o, shift + jnp.log(z)


def _step_backward(chunk):
    """Gradients of one step's chunks: dq [B,K,Cq], dk3 [B,3K,Cq], dv3 [B,3K,C], db3."""
    (q, k3, v3, b3), o, lse, do, dlse = chunk
    p = jnp.exp(_scores(q, k3, b3) - lse[..., None])
    delta = jnp.sum(do * o, axis=-1) - dlse        # = sum_j p_ij dp_ij - dlse (`chunked`)
    do_low = do.astype(v3.dtype)
    dp = jnp.einsum("bic,bjc->bij", do_low, v3, preferred_element_type=F32)
    ds = p * (dp - delta[..., None])
    ds_low = ds.astype(q.dtype)
    dv3 = jnp.einsum("bij,bic->bjc", p.astype(v3.dtype), do_low, preferred_element_type=F32)
    dq = jnp.einsum("bij,bjc->bic", ds_low, k3, preferred_element_type=F32)
    dk3 = jnp.einsum("bij,bic->bjc", ds_low, q, preferred_element_type=F32)
    db3 = None if b3 is None else jnp.swapaxes(ds, -1, -2)
    return dq, dk3, dv3, db3


def _per_step(fn, per_step: int, chunks):
    """fn on the pytree `chunks` of [G, M, ...] arrays, `per_step` chunks at a time
    (lax.map over steps of the flattened chunk axis; one call if all fit in one step)."""
    shape = jax.tree.leaves(chunks)[0].shape[:2]
    if per_step >= shape[0] * shape[1]:
        out = fn(jax.tree.map(_rows, chunks))
        return jax.tree.map(lambda y: y.reshape(shape + y.shape[1:]), out)
    steps = jax.tree.map(lambda x: chunked.to_steps(x, per_step), chunks)
    return jax.tree.map(lambda y: chunked.from_steps(y, shape), jax.lax.map(fn, steps))


def _tables(q, k, v, key_bias):
    look = chunked.look_around
    return q, look(k), look(v), None if key_bias is None else look(key_bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend(q, k, v, key_bias, self_keys, per_step):
    return _per_step(functools.partial(_step_forward, self_keys), per_step,
                     _tables(q, k, v, key_bias))


def _attend_fwd(q, k, v, key_bias, self_keys, per_step):
    o, lse = _attend(q, k, v, key_bias, self_keys, per_step)
    return (o, lse), (q, k, v, key_bias, o, lse)


def _attend_bwd(self_keys, per_step, res, cotangents):
    del self_keys        # the shift cancels in p = exp(s - lse)
    q, k, v, key_bias, o, lse = res
    do, dlse = cotangents
    dq, dk3, dv3, db3 = _per_step(_step_backward, per_step,
                                  (_tables(q, k, v, key_bias), o, lse,
                                   do.astype(F32), dlse.astype(F32)))
    dk, dv = look_around_transpose(dk3), look_around_transpose(dv3)
    db = None if db3 is None else look_around_transpose(db3).astype(key_bias.dtype)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), db


_attend.defvjp(_attend_fwd, _attend_bwd)


def sorted_chunk_attention(q, k, v, key_bias=None, *, self_keys: bool,
                           chunks_per_step: int | None = None):
    """Softmax attention of each chunk over the 3K keys of chunks m, m-1, m+1 (mod M).

    q [G, M, K, Cq] raw queries, k [G, M, K, Cq] keys, v [G, M, K, C], all in sorted chunk
    order (G groups = items x rounds); key_bias [G, M, K, K] or None: the score of query
    slot i and key j of chunk m' gets + key_bias[g, m', j, i] (GLA). self_keys: k is
    normalize_keys(q) and there is no key_bias (the softmax shift is |q_i|).
    chunks_per_step: chunks per loop step (`chunked.step_size`: None is the backend
    default), a cap on the scores' memory. Returns o [G, M, K, C] and lse [G, M, K],
    float32."""
    if self_keys and key_bias is not None:
        raise ValueError("self_keys=True needs key_bias=None: the learned score term can "
                         "exceed the |q| bound on the row maximum")
    n_chunks = q.shape[0] * q.shape[1]
    per_step = chunked.step_size(n_chunks, q.shape[2], chunks_per_step)
    return _attend(q, k, v, key_bias, self_keys, per_step)

