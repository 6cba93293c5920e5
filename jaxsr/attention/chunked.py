"""Softmax attention inside LSH chunks, a few chunks per loop step (forward and backward).

Inputs are L-row tables q [L,Cq], k [L,Cq], v [L,C] (several images may share one table:
the chunk ids then index the concatenation) and chunk ids [B, M, K] (B groups of M chunks
of K sorted positions; NLSA/GLA: one group per image and hashing round). Chunk m of a
group attends to the 3K keys of chunks m, m-1, m+1 of the same group (wrapping), the
official look-around.

Why a loop: the scores of all chunks at once, [B, M, K, 3K] in float32, are 113 MB for one
128x128 map (K=144, 4 rounds), and XLA:CPU streams that tensor through memory in every
pass (score matmul, max, exp, sum, normalise, output matmul; six more in the backward).
A loop step of a few chunks keeps its scores (CPU_SCORES_PER_STEP entries, ~1 MB) in the
cache from the score matmul to the output: on a 2-core CPU the chunk attention's forward
on that map went from 480-856 to 83-124 ms (loaded microbenchmark), and with the other
changes of docs/performance.md the whole NLSA core from 167 to 75 ms forward, 300 to 133
ms forward + backward (idle machine). Each step gathers its rows straight from
the L-row tables (no sorted or look-around copies), and the backward recomputes the
probabilities per step from the saved log-sum-exp (as FlashAttention does) and adds the
step's gradients into [L, .] accumulators: the memory is O(L * C), not O(B * M * K * 3K),
so a 512x512 map fits where the whole score tensor would need gigabytes.

`chunks_per_step` sets the step size: None picks the cache-sized default on CPU and all
chunks in one step elsewhere (GPU/TPU: one large batched matmul is fastest there); a
smaller value caps the memory on an accelerator.

Row maximum: the softmax shift must be >= the row maximum (no overflow) and close to it
(no underflow). With `self_keys` (k = normalize_keys(q), no score bias: NLSA) every query
is among its own keys, so the maximum is known without a pass over the scores:
s_ij = <q_i, k_j> <= |q_i| (|k_j| <= 1) and s_ii = |q_i| (for |q_i| >= eps; below, all
|s_ij| <= |q_i| < eps). Otherwise (GLA's learned score term) the maximum is computed.
"""
import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import target_platform

CPU_SCORES_PER_STEP = 2**18   # score entries per loop step on CPU (1 MB of float32)
ALL_CHUNKS = 2**62            # a step size that means: every chunk in one step
F32 = jnp.float32
_default_per_step = [None]    # set by `default_chunks_per_step` (read at trace time)


@contextlib.contextmanager
def default_chunks_per_step(n: int | None):
    """Within the block, attention traced without an explicit `chunks_per_step` uses n
    (ALL_CHUNKS: one step) instead of the backend default, e.g. to cap an accelerator's
    memory in a whole network without changing its modules, or to count FLOPs: XLA's
    cost analysis counts a loop body once, so FLOPs are counted on the one-step program."""
    before, _default_per_step[0] = _default_per_step[0], n
    try:
        yield
    finally:
        _default_per_step[0] = before


def step_size(n_chunks: int, chunk_size: int, requested: int | None = None) -> int:
    """Chunks per loop step: `requested`, else the `default_chunks_per_step` in effect,
    else the default of this backend (module doc)."""
    requested = _default_per_step[0] if requested is None else requested
    if requested is None:
        if target_platform.current() != "cpu":
            return n_chunks
        requested = CPU_SCORES_PER_STEP // (3 * chunk_size * chunk_size)
    return int(max(1, min(requested, n_chunks)))


def look_around(x):
    """[B, M, K, ...] -> [B, M, 3K, ...]: chunk m followed by chunks m-1 and m+1 (mod M,
    within a group), the official `add_adjacent_buckets`."""
    return jnp.concatenate([x, jnp.roll(x, 1, axis=1), jnp.roll(x, -1, axis=1)], axis=2)


def _take_rows(x, idx):
    """x[idx] for row indices known to be in range (no clamping/fill code)."""
    return x.at[idx].get(mode="promise_in_bounds")


def _add_rows(acc, idx, rows):
    """acc[idx] += rows (idx [...], rows [..., D]) for in-range indices."""
    flat = rows.reshape((-1,) + rows.shape[idx.ndim:]).astype(acc.dtype)
    return acc.at[idx.reshape(-1)].add(flat, mode="promise_in_bounds")


def to_steps(x, per_step: int):
    """[B, M, ...] -> [S, G, ...] chunks per loop step; the last step is padded with zeros
    (chunk ids 0: valid rows whose results are dropped, or zero cotangents)."""
    x = x.reshape((-1,) + x.shape[2:])
    n_steps = -(-x.shape[0] // per_step)
    x = jnp.pad(x, [(0, n_steps * per_step - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return x.reshape((n_steps, per_step) + x.shape[1:])


def from_steps(x, shape):
    """Inverse of `to_steps` for an output of shape [B, M, ...] (drops the padding)."""
    n = shape[0] * shape[1]
    return x.reshape((-1,) + x.shape[2:])[:n].reshape(shape + x.shape[2:])


def _step_scores(q, k, key_bias, qi, ki):
    """Scores [G, K, 3K] in float32 of one step: query rows qi [G, K], key rows ki [G, 3K];
    plus key_bias[key j, query slot i] when given (GLA)."""
    s = jnp.einsum("gic,gjc->gij", _take_rows(q, qi), _take_rows(k, ki),
                   preferred_element_type=F32)
    if key_bias is not None:
        g = _take_rows(key_bias, ki)[..., :qi.shape[-1]]             # [G, 3K, K]
        s = s + jnp.swapaxes(g, -1, -2).astype(F32)
    return s


def _step_forward(q, k, v, key_bias, q_norm, ids):
    """Output [G, K, C] (float32, normalised) and log-sum-exp [G, K] of one step."""
    qi, ki = ids
    s = _step_scores(q, k, key_bias, qi, ki)
    shift = jnp.max(s, axis=-1) if q_norm is None else _take_rows(q_norm, qi)
    e = jnp.exp(s - shift[..., None])
    z = jnp.sum(e, axis=-1)
    # Normalising the [G, K, C] output is cheaper than normalising the [G, K, 3K] weights.
    o = jnp.einsum("gij,gjc->gic", e.astype(v.dtype), _take_rows(v, ki),
                   preferred_element_type=F32) / z[..., None]
    return o, shift + jnp.log(z)


def _forward(q, k, v, ids, key_bias, self_keys, per_step):
    n_groups, n_chunks, size = ids.shape
    q_norm = None
    if self_keys:
        q_norm = jnp.sqrt(jnp.sum(jnp.square(q.astype(F32)), axis=-1))
    steps = (to_steps(ids, per_step), to_steps(look_around(ids), per_step))
    o, lse = jax.lax.map(functools.partial(_step_forward, q, k, v, key_bias, q_norm), steps)
    o = from_steps(o, (n_groups, n_chunks)).reshape(n_groups, n_chunks * size, -1)
    return o, from_steps(lse, (n_groups, n_chunks)).reshape(n_groups, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attend(q, k, v, ids, key_bias, self_keys, per_step):
    return _forward(q, k, v, ids, key_bias, self_keys, per_step)


def _attend_fwd(q, k, v, ids, key_bias, self_keys, per_step):
    o, lse = _forward(q, k, v, ids, key_bias, self_keys, per_step)
    return (o, lse), (q, k, v, ids, key_bias, o, lse)


def _step_backward(q, k, v, key_bias, acc, step):
    """Adds one step's gradients into acc = (dq, dk, dv, dbias) [L, .] (float32)."""
    (qi, ki), o, lse, do, dlse = step
    dq, dk, dv, dbias = acc
    s = _step_scores(q, k, key_bias, qi, ki)
    p = jnp.exp(s - lse[..., None])
    # sum_j p_ij dp_ij = <do_i, o_i>: a [G, K] product instead of a pass over [G, K, 3K].
    # d lse / d s = p, so the lse cotangent enters like a shift of dp. Zero cotangents
    # (the padding of the last step) give zero gradients.
    delta = jnp.sum(do * o, axis=-1) - dlse
    # Matmuls take operands in the inputs' dtype (bf16 under mixed precision, as in the
    # forward) and accumulate in float32; for float32 inputs the casts are identities.
    do_low = do.astype(v.dtype)
    dp = jnp.einsum("gic,gjc->gij", do_low, _take_rows(v, ki), preferred_element_type=F32)
    ds = p * (dp - delta[..., None])
    ds_low = ds.astype(q.dtype)
    dv = _add_rows(dv, ki, jnp.einsum("gij,gic->gjc", p.astype(v.dtype), do_low,
                                      preferred_element_type=F32))
    dq = _add_rows(dq, qi, jnp.einsum("gij,gjc->gic", ds_low, _take_rows(k, ki),
                                      preferred_element_type=F32))
    dk = _add_rows(dk, ki, jnp.einsum("gij,gic->gjc", ds_low, _take_rows(q, qi),
                                      preferred_element_type=F32))
    if dbias is not None:
        dbias = _add_rows(dbias, ki, jnp.swapaxes(ds, -1, -2))
    return (dq, dk, dv, dbias), None


def _attend_bwd(self_keys, per_step, res, cotangents):
    del self_keys    # the shift cancels in p = exp(s - lse)
    q, k, v, ids, key_bias, o, lse = res
    do, dlse = cotangents
    n_groups, n_chunks, size = ids.shape
    split = functools.partial(to_steps, per_step=per_step)

    def chunked(x):
        return split(x.reshape((n_groups, n_chunks, size) + x.shape[2:]))
    steps = ((split(ids), split(look_around(ids))), chunked(o), chunked(lse),
             chunked(do.astype(F32)), chunked(dlse.astype(F32)))
    zeros = lambda x, width=None: jnp.zeros((x.shape[0], width or x.shape[1]), F32)  # noqa: E731
    acc = (zeros(q), zeros(k), zeros(v), None if key_bias is None else zeros(key_bias, size))
    (dq, dk, dv, dbias), _ = jax.lax.scan(
        functools.partial(_step_backward, q, k, v, key_bias), acc, steps)
    if dbias is not None:
        dbias = jnp.pad(dbias, ((0, 0), (0, key_bias.shape[1] - size))).astype(key_bias.dtype)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
            np.zeros(ids.shape, jax.dtypes.float0), dbias)


_attend.defvjp(_attend_fwd, _attend_bwd)


def attend_chunks(q, k, v, chunk_ids, key_bias=None, self_keys: bool = False,
                  chunks_per_step: int | None = None):
    """Per-chunk softmax attention with scores and softmax in float32.

    q [L,Cq] raw queries, k [L,Cq] keys, v [L,C], chunk_ids [B,M,K] (rows of the
    tables); key_bias [L, >=K] (DLSN's learnable score: s[i, j] += key_bias[key j, query
    slot i]) or None. self_keys: k is normalize_keys(q) and there is no key_bias (the
    softmax shift is then |q_i|, module doc). Returns o [B, M*K, C] (float32) and
    lse [B, M*K], in chunk order.
    """
    if self_keys and key_bias is not None:
        raise ValueError("self_keys=True needs key_bias=None: the learned score term can "
                         "exceed the |q| bound on the row maximum")
    n_chunks = chunk_ids.shape[0] * chunk_ids.shape[1]
    per_step = step_size(n_chunks, chunk_ids.shape[2], chunks_per_step)
    return _attend(q, k, v, chunk_ids, key_bias, self_keys, per_step)
