"""The Pallas chunk-attention kernels (jaxsr.attention.kernels) in Pallas interpret mode on
the CPU against the XLA path they replace: `chunked.attend_chunks` on the flattened tables
with identity chunk ids computes the same look-around attention. Forward (o, lse) and
gradients (of a random projection of o and lse) for NLSA (self_keys) and GLA (key_bias),
M = 1, 2 and 3+ chunks (wrap-around), NLSN's unaligned K = 144, bf16 operands; and the
row / scalar gather kernels of the sort, unsort and merge against NumPy indexing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr.attention import chunked, lsh, sorted_chunks
from jaxsr.attention.kernels import chunk_attention, gather, gather_rows, gather_scalars, sorted_chunk_attention


def tables(shape, channels, gla: bool, dtype=jnp.float32, seed=0):
    """Random sorted tables q, k, v [G, M, K, .] and key_bias [G, M, K, K] (GLA) or None;
    NLSA's keys are its normalised queries."""
    g, m, size, cq = shape
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((g, m, size, cq)) * 2, dtype)
    k = jnp.asarray(rng.standard_normal((g, m, size, cq)), dtype) if gla else \
        lsh.normalize_keys(q)
    v = jnp.asarray(rng.standard_normal((g, m, size, channels)), dtype)
    bias = jnp.asarray(rng.standard_normal((g, m, size, size)), dtype) if gla else None
    return q, k, v, bias


def xla_reference(q, k, v, key_bias):
    """attend_chunks on [G*M*K, .] rows with ids = arange, reshaped to the kernels' layout."""
    g, m, size = q.shape[:3]
    ids = jnp.arange(g * m * size, dtype=jnp.int32).reshape(g, m, size)
    rows = lambda x: None if x is None else x.reshape(g * m * size, -1)  # noqa: E731
    o, lse = chunked.attend_chunks(rows(q), rows(k), rows(v), ids, rows(key_bias),
                                   self_keys=key_bias is None)
    return o.reshape(v.shape[:3] + (-1,)), lse.reshape(g, m, size)


def kernels(q, k, v, key_bias):
    return sorted_chunk_attention(q, k, v, key_bias, self_keys=key_bias is None,
                                  interpret=True)


def outputs_and_grads(attend, q, k, v, key_bias, seed=1):
    """(o, lse) and the gradients of <o, w_o> + <lse, w_l> w.r.t. q, k, v (and key_bias)."""
    rng = np.random.default_rng(seed)
    w_o = jnp.asarray(rng.standard_normal(v.shape[:3] + (v.shape[3],)), jnp.float32)
    w_l = jnp.asarray(rng.standard_normal(v.shape[:3]), jnp.float32)

    def loss(*args):
        o, lse = attend(*args)
        return jnp.sum(o * w_o) + jnp.sum(lse * w_l), (o, lse)
    argnums = (0, 1, 2) if key_bias is None else (0, 1, 2, 3)
    grads, out = jax.jit(jax.grad(loss, argnums, has_aux=True))(q, k, v, key_bias)
    return out, grads


def assert_close(got, want, rtol, what):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = np.max(np.abs(want))
    err = np.max(np.abs(got - want))
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} x max {scale:.3g}"


def sorted_reference(q, k, v, key_bias):
    """The scatter-free XLA path on the same sorted tables (same interface)."""
    return sorted_chunks.sorted_chunk_attention(q, k, v, key_bias, self_keys=key_bias is None)


def assert_matches(shape, channels, gla, dtype=jnp.float32, rtol=2e-6, ref=xla_reference):
    args = tables(shape, channels, gla, dtype)
    (o, lse), grads = outputs_and_grads(kernels, *args)
    (o_ref, lse_ref), grads_ref = outputs_and_grads(ref, *args)
    assert o.shape == o_ref.shape and o.dtype == jnp.float32 and lse.dtype == jnp.float32
    assert_close(o, o_ref, rtol, "o")
    assert_close(lse, lse_ref, rtol, "lse")
    for name, g, g_ref in zip(("dq", "dk", "dv", "dkey_bias"), grads, grads_ref):
        assert g.dtype == g_ref.dtype == dtype
        assert_close(g, g_ref, rtol * 2, name)


# (tables, channels, GLA?): the look-around cases once each (NLSA and GLA share it).
@pytest.mark.parametrize("shape,channels,gla", [
    ((2, 3, 8, 4), 6, False),    # M = 3: every chunk's look-around wraps at one end or both
    ((2, 3, 8, 4), 6, True),
    ((1, 2, 8, 4), 5, True),     # M = 2: the neighbour twice
    ((3, 1, 5, 3), 7, False),    # M = 1: the chunk three times; odd sizes
], ids=["nlsa-M3", "gla-M3", "gla-M2", "nlsa-M1-odd"])
def test_kernels_match_xla_path(shape, channels, gla):
    assert_matches(shape, channels, gla)


def test_kernels_match_sorted_xla_path():
    """The sorted-table XLA path (rolls for the look-around) gives the same results."""
    assert_matches((2, 4, 8, 4), 6, True, ref=sorted_reference)


@pytest.mark.parametrize("gla", [False, True], ids=["nlsa", "gla"])
def test_whole_lsh_attention_with_kernels(gla):
    """batched_lsh_attention with attention_impl='pallas' (hash, sort, gather into sorted
    chunk order, kernels, unsort, merge) equals today's looped path, with gradients: the
    tables reach the kernels in the layout the interface promises. 2 items, L = 100
    (padded to 4 chunks of 32 by tail copies), 2 rounds."""
    rng = np.random.default_rng(3)
    n, length, size = 2, 100, 32
    q = jnp.asarray(rng.standard_normal((n, length, 4)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((n, length, 6)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal((n, length, size)), jnp.float32) if gla else None
    kind = lsh.SUPERBIT if gla else lsh.CROSS_POLYTOPE
    rot = lsh.fixed_rotations(0, "t", kind, 4, 2, lsh.num_buckets(length, size))
    w = jnp.asarray(rng.standard_normal((n, length, 6)), jnp.float32)

    def run(impl):
        def loss(q, v, b):
            out = lsh.batched_lsh_attention(q, v, rot, size, kind, b, impl=impl)
            return jnp.sum(out * w), out
        return jax.jit(jax.grad(loss, (0, 1, 2) if gla else (0, 1), has_aux=True))(q, v, bias)
    grads, out = run("pallas")
    grads_ref, out_ref = run("xla")
    assert_close(out, out_ref, 2e-6, "output")
    for name, g, g_ref in zip(("dq", "dv", "dkey_bias"), grads, grads_ref):
        assert_close(g, g_ref, 4e-6, name)


@pytest.mark.parametrize("gla", [False, True], ids=["nlsa", "gla"])
def test_keys_normalised_in_the_kernels(gla):
    """k=None: the kernels normalise q's chunks as keys (no key table) and fold the keys'
    gradient into dq; the reference differentiates through lsh.normalize_keys. One query
    row is zero (GLA's ReLU makes them): its key is 0 and its gradient finite."""
    q, _, v, bias = tables((2, 3, 8, 4), 6, gla)
    q = q.at[0, 1, 2].set(0.0)
    rng = np.random.default_rng(6)
    w_o = jnp.asarray(rng.standard_normal(v.shape), jnp.float32)
    w_l = jnp.asarray(rng.standard_normal(v.shape[:3]), jnp.float32)

    def loss(attend, q, v, b):
        o, lse = attend(q, v, b)
        return jnp.sum(o * w_o) + jnp.sum(lse * w_l), (o, lse)

    def run(attend):
        argnums = (1, 2, 3) if gla else (1, 2)
        return jax.jit(jax.grad(loss, argnums, has_aux=True), static_argnums=0)(
            attend, q, v, bias)
    grads, (o, lse) = run(lambda q, v, b: sorted_chunk_attention(
        q, None, v, b, self_keys=not gla, interpret=True))
    grads_ref, (o_ref, lse_ref) = run(lambda q, v, b: xla_reference(
        q, lsh.normalize_keys(q), v, b))
    assert_close(o, o_ref, 2e-6, "o")
    assert_close(lse, lse_ref, 2e-6, "lse")
    for name, g, g_ref in zip(("dq", "dv", "dkey_bias"), grads, grads_ref):
        assert np.all(np.isfinite(np.asarray(g))), name
        assert_close(g, g_ref, 4e-6, name)


def test_kernels_normalise_keys_with_the_lsh_eps():
    """The kernels sit below lsh and so keep their own copy of F.normalize's eps: it must
    be lsh's (a row with |q| < eps is scaled by 1/eps in both)."""
    assert chunk_attention.KEY_EPS == lsh.KEY_EPS


def test_unaligned_chunk_size_144():
    """NLSN's K = 144 is not a multiple of the 128-lane tile: the kernels take whole
    chunks as blocks (Mosaic accepts a block equal to the array dimension), unpadded."""
    assert_matches((1, 4, 144, 4), 8, gla=False)


@pytest.mark.parametrize("gla", [False, True], ids=["nlsa", "gla"])
def test_bf16_operands(gla):
    """bf16 tables (mixed precision): both paths take bf16 matmul operands with float32
    accumulation and a float32 softmax; they differ in summation order and in where the
    bf16 roundings of the weights/score gradients fall, hence the bf16-sized tolerance."""
    assert_matches((2, 3, 16, 8), 8, gla, jnp.bfloat16, rtol=2e-2)


def test_bad_tables_are_named():
    q, k, v, bias = tables((1, 2, 8, 4), 6, gla=True)
    with pytest.raises(ValueError, match="key_bias"):
        sorted_chunk_attention(q, k, v, bias[..., :4], self_keys=False, interpret=True)
    with pytest.raises(ValueError, match=r"q, k \[G, M, K, Cq\]"):
        sorted_chunk_attention(q, k[:, :1], v, bias, self_keys=False, interpret=True)
    with pytest.raises(ValueError, match="self_keys=True needs key_bias=None"):
        sorted_chunk_attention(q, k, v, bias, self_keys=True, interpret=True)


def test_compiled_mode_is_refused_off_tpu():
    """Traced for the CPU without interpret mode: a clear error, not a Mosaic failure."""
    q, k, v, _ = tables((1, 2, 8, 4), 6, gla=False)
    with pytest.raises(ValueError, match="attention_impl='xla'"):
        sorted_chunk_attention(q, k, v, self_keys=True, interpret=False)


# (rounds, weighted, table in VMEM?): a plain copy, a weighted sum over rounds (the merge),
# an unweighted sum (the gradient's), each from a VMEM-resident table and by row DMAs.
@pytest.mark.parametrize("rounds,weighted", [(1, False), (3, True), (2, False)],
                         ids=["copy", "weighted-sum", "sum"])
@pytest.mark.parametrize("in_vmem", [True, False], ids=["vmem", "dma"])
def test_gather_rows_matches_numpy(rounds, weighted, in_vmem, monkeypatch):
    """out[n, t] = sum_r w[n, r, t] x[n, idx[n, r, t]]; T = 70 is not a multiple of the
    row block (its padding rows are cut off)."""
    if not in_vmem:
        monkeypatch.setattr(gather, "VMEM_TABLE_BYTES", 0)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 50, 24)).astype(np.float32)
    idx = rng.integers(0, 50, (2, rounds, 70)).astype(np.int32)
    w = rng.random((2, rounds, 70)).astype(np.float32) if weighted else None
    want = np.stack([x[n][idx[n]] for n in range(2)])                  # [N, R, T, D]
    want = want[:, 0] if rounds == 1 and not weighted else \
        np.sum(want * (w[..., None] if weighted else 1.0), axis=1)
    got = gather_rows(jnp.asarray(x), jnp.asarray(idx),
                      None if w is None else jnp.asarray(w), interpret=True)
    assert got.shape == want.shape and got.dtype == jnp.float32
    if rounds == 1 and not weighted:
        np.testing.assert_array_equal(np.asarray(got), want)           # rows copied exactly
    else:
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_gather_scalars_matches_numpy():
    """x[n, idx[n, t]] from a lane-dense table of 300 entries (padded to 384), 2500
    outputs (3 grid steps of 1024, the last padded)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 300)).astype(np.float32)
    idx = rng.integers(0, 300, (2, 2500)).astype(np.int32)
    got = gather_scalars(jnp.asarray(x), jnp.asarray(idx), interpret=True)
    np.testing.assert_array_equal(np.asarray(got), np.take_along_axis(x, idx, axis=1))


def test_gather_kernels_refuse_what_they_cannot_load():
    """16-bit tables (Mosaic loads single rows of 32-bit types only) and scalar tables
    beyond VMEM are named; the attention path then uses XLA's gathers instead."""
    x = jnp.zeros((1, 8, 4), jnp.bfloat16)
    with pytest.raises(ValueError, match="32-bit tables"):
        gather_rows(x, jnp.zeros((1, 1, 4), jnp.int32), interpret=True)
    big = jnp.zeros((1, gather.VMEM_TABLE_BYTES // 4 + 1), jnp.float32)
    with pytest.raises(ValueError, match="float32 \\[N, S\\] tables"):
        gather_scalars(big, jnp.zeros((1, 4), jnp.int32), interpret=True)
