"""The scatter-free sorted-table path (jaxsr.attention.sorted_chunks) against today's looped
path (chunked.attend_chunks + unsort_and_merge) and the NumPy transcription of the
official code; the formulation each attention_impl picks; no scatter in what a TPU
compiles for it."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsh_numpy_reference as ref
from jaxsr.attention import lsh

# (kind, items, L, K, rounds): padding L % K != 0 with M = 3 (odd map 5x7), M = 1 (L < K),
# M = 2 with padding (the neighbour twice).
CASES = [(lsh.CROSS_POLYTOPE, 2, 35, 16, 3), (lsh.CROSS_POLYTOPE, 1, 10, 16, 2),
         (lsh.SUPERBIT, 2, 24, 16, 2), (lsh.SUPERBIT, 2, 35, 16, 3)]


def _inputs(kind, n, length, k, r, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, length, 8)).astype(np.float32)
    v = rng.normal(size=(n, length, 6)).astype(np.float32)
    # >= 0: the NumPy reference's fc(f) can reproduce it (test below)
    bias = np.abs(rng.normal(size=(n, length, k))).astype(np.float32) \
        if kind == lsh.SUPERBIT else None
    rot = lsh.fixed_rotations(0, "t", kind, 8, r, lsh.num_buckets(length, k))
    weights = rng.normal(size=(n, length, 6)).astype(np.float32)
    cast = lambda x: None if x is None else jnp.asarray(x, dtype)   # noqa: E731
    return cast(q), cast(v), cast(bias), jnp.asarray(rot), jnp.asarray(weights)


def _run(formulation, kind, k, q, v, bias, rot, weights, chunks_per_step=None):
    """Output and gradients (q, v[, bias]) of sum(attention * weights) in `formulation`."""
    def loss(q, v, bias):
        with lsh.use_formulation(formulation):
            out = lsh.batched_lsh_attention(q, v, rot, k, kind, bias,
                                            chunks_per_step=chunks_per_step)
        return jnp.sum(out.astype(jnp.float32) * weights), out
    argnums = (0, 1) if bias is None else (0, 1, 2)
    grads, out = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))(q, v, bias)
    return [np.asarray(x, np.float32) for x in (out,) + grads]


@functools.lru_cache(maxsize=None)
def _looped(case: int, dtype=jnp.float32):
    """Today's path on CASES[case] (shared by the tests that compare against it)."""
    kind, n, length, k, r = CASES[case]
    return _run("looped", kind, k, *_inputs(kind, n, length, k, r, dtype))


def _assert_close(got, want, rel):
    for g, w, name in zip(got, want, ("output", "dq", "dv", "dbias")):
        np.testing.assert_allclose(g, w, rtol=rel, atol=rel * np.abs(w).max(), err_msg=name)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_sorted_path_matches_looped_path(case):
    kind, n, length, k, r = CASES[case]
    args = _inputs(kind, n, length, k, r)
    _assert_close(_run("sorted", kind, k, *args), _looped(case), 1e-6)


def test_sorted_path_chunks_per_step_caps_without_changing_results():
    kind, n, length, k, r = CASES[3]
    args = _inputs(kind, n, length, k, r)
    _assert_close(_run("sorted", kind, k, *args, chunks_per_step=2), _looped(3), 1e-6)


@pytest.mark.parametrize("kind,n,length,k,r", [CASES[0], CASES[3]])
def test_sorted_path_matches_numpy_reference(kind, n, length, k, r):
    q, v, bias, rot, weights = _inputs(kind, n, length, k, r)
    got = _run("sorted", kind, k, q, v, bias, rot, weights)[0]
    # The reference computes GLA's score term as fc(f); with identity layers and zero
    # biases fc(f) = f for f >= 0 (the ReLU between them), so f = bias gives `bias`.
    eye, zero = np.eye(k), np.zeros(k)
    fc = None if bias is None else (eye, zero, eye, zero)
    want = ref.lsh_attention(q, v, np.asarray(rot), k, kind == lsh.SUPERBIT,
                             None if bias is None else np.asarray(bias), fc)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_sorted_path_bf16_stays_within_bf16_rounding_of_looped():
    kind, n, length, k, r = CASES[3]
    args = _inputs(kind, n, length, k, r, dtype=jnp.bfloat16)
    got, want = _run("sorted", kind, k, *args), _looped(3, jnp.bfloat16)
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= 2e-2 * np.abs(w).max()


def test_scatter_free_inverse_equals_scatter_inverse():
    codes = jnp.asarray(np.random.default_rng(0).integers(0, 6, size=(3, 50)), jnp.int32)
    order, undo = lsh.sort_order(codes, 6)
    order2, undo2 = lsh.sort_order(codes, 6, scatter_free=True)
    np.testing.assert_array_equal(order, order2)
    np.testing.assert_array_equal(undo, undo2)
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(undo), np.asarray(order), 1),
                                  np.broadcast_to(np.arange(50), (3, 50)))


@pytest.mark.parametrize("impl,platform,want", [
    ("auto", "cpu", "looped"), ("xla", "cpu", "looped"), ("xla", "gpu", "sorted"),
    ("auto", "gpu", "sorted"), ("xla", "tpu", "sorted"), ("pallas", "cpu", "pallas")])
def test_resolve_impl_per_platform(impl, platform, want):
    assert lsh.resolve_impl(impl, platform) == want


def test_resolve_impl_auto_on_tpu_uses_kernels_when_present():
    want = "pallas" if lsh.kernels_available() else "sorted"
    assert lsh.resolve_impl("auto", "tpu") == want


def test_bad_impl_and_formulation_are_named():
    with pytest.raises(ValueError, match="attention_impl"):
        lsh.resolve_impl("triton", "cpu")
    with pytest.raises(ValueError, match="formulation"):
        with lsh.use_formulation("scattered"):
            pass


def _scatters_in_tpu_grad(formulation):
    """Scatter ops in the optimized HLO of a tiny NLSA + GLA forward+backward compiled for
    one v5e chip (libtpu, deviceless) with attention_impl='xla'."""
    from jax.sharding import SingleDeviceSharding
    from jaxsr import accelerators, aot, target_platform
    from jaxsr.attention import GlobalLearnableAttention, NonLocalSparseAttention
    aot.prepare_host()
    device = aot.target_devices(accelerators.parse_target("v5e:2x2"))[0]
    spec = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,   # noqa: E731
                                          sharding=SingleDeviceSharding(device))
    nlsa = NonLocalSparseAttention(chunk_size=16, n_hashes=2, attention_impl="xla")
    gla = GlobalLearnableAttention(chunk_size=16, n_hashes=2, attention_impl="xla")
    x0 = jnp.zeros((2, 7, 9, 16))

    def loss(params, x, key):
        y = nlsa.apply(params[0], x, rngs={"lsh": key})
        return jnp.sum(gla.apply(params[1], y, rngs={"lsh": key}))
    with target_platform.tracing_for("tpu"), lsh.use_formulation(formulation):
        params = jax.eval_shape(lambda: (nlsa.init(jax.random.PRNGKey(0), x0),
                                         gla.init(jax.random.PRNGKey(0), x0)))
        args = jax.tree.map(spec, (params, jax.eval_shape(lambda: x0),
                                   jax.eval_shape(lambda: jax.random.PRNGKey(1))))
        text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile().as_text()
    return len(re.findall(r"\bscatter\(", text))


def test_tpu_train_program_has_no_scatter():
    """The sorted path compiles for a TPU without a scatter; today's looped path has its
    backward scatter-adds (so the count can fail)."""
    pytest.importorskip("libtpu", reason="libtpu compiles for TPUs")
    assert lsh.resolve_impl("xla", "tpu") == "sorted"
    assert _scatters_in_tpu_grad("sorted") == 0
    assert _scatters_in_tpu_grad("looped") >= 4
