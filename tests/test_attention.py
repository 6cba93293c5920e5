"""jaxsr.attention: dense limits, determinism, rotation injection, gradients, memory."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxsr.attention import (GlobalLearnableAttention, NonLocalAttention,
                             NonLocalSparseAttention, dense, lsh)
from tests.fast_compile import jit as fast_jit


def _np_dense(q, v, bias=None):
    """softmax_j(<q_i, k_j/max(|k_j|, 5e-5)> + bias[j, i]) v_j, float64 NumPy."""
    q, v = np.asarray(q, np.float64), np.asarray(v, np.float64)
    k = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 5e-5)
    s = q @ k.T
    if bias is not None:
        s = s + np.asarray(bias, np.float64)[:, :q.shape[0]].T
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("length", [32, 20])          # L == K (one chunk); L < K
@pytest.mark.parametrize("kind", [lsh.CROSS_POLYTOPE, lsh.SUPERBIT])
def test_one_chunk_equals_dense_softmax_attention(length, kind):
    rng = np.random.default_rng(length)
    q, v = rng.normal(size=(length, 6)), rng.normal(size=(length, 5))
    # GLA's learnable term is indexed by the query's slot in its *sorted* chunk, so it
    # equals a dense positional bias only when sorting is the identity (L < K: 1 bucket).
    bias = rng.normal(size=(length, 32)) if kind == lsh.SUPERBIT and length < 32 else None
    nb = lsh.num_buckets(length, 32)
    rot = jnp.asarray(lsh.fixed_rotations(0, "t", kind, 6, 3, nb))
    fn = fast_jit(lambda q, v, b: lsh.lsh_attention(q, v, rot, 32, kind, b))
    got = fn(jnp.asarray(q, jnp.float32), jnp.asarray(v, jnp.float32),
             None if bias is None else jnp.asarray(bias, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), _np_dense(q, v, bias), atol=2e-5)


def test_several_chunks_differ_from_dense():
    """With M > 1 chunks the result is sparse attention, not dense (the test above can fail)."""
    rng = np.random.default_rng(1)
    q, v = rng.normal(size=(128, 6)), rng.normal(size=(128, 5))
    rot = jnp.asarray(lsh.fixed_rotations(0, "t", lsh.CROSS_POLYTOPE, 6, 2, 8))
    fn = fast_jit(lambda q, v: lsh.lsh_attention(q, v, rot, 16, lsh.CROSS_POLYTOPE))
    got = fn(jnp.asarray(q, jnp.float32), jnp.asarray(v, jnp.float32))
    assert np.abs(np.asarray(got) - _np_dense(q, v)).max() > 1e-2


def test_num_buckets_follows_official_formula():
    assert lsh.num_buckets(48 * 48, 144) == 16          # spec 2.3: 48x48 patches
    assert lsh.num_buckets(48 * 48, 128) == 18          # spec 3.1: DLSN, 48x48
    assert lsh.num_buckets(144, 144) == 2 and lsh.num_buckets(287, 144) == 2
    assert lsh.num_buckets(136 * 136, 144) == 128       # cap
    assert lsh.num_buckets(100, 144) == 1               # official: 0 (crash); here dense


def test_nonlocal_attention_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 8)).astype(np.float32)
    module = NonLocalAttention(reduction=2, res_scale=0.7)
    params = fast_jit(module.init)(jax.random.PRNGKey(0), x)["params"]
    y = np.asarray(fast_jit(module.apply)({"params": params}, x))

    def emb(name):
        kernel = np.asarray(params[f"{name}_0"]["kernel"], np.float64)[0, 0]
        z = x.reshape(2, 30, 8) @ kernel + np.asarray(params[f"{name}_0"]["bias"])
        a = float(params[f"{name}_1"]["negative_slope"])
        return np.where(z >= 0, z, a * z)

    theta, phi, g = emb("conv_match1"), emb("conv_match2"), emb("conv_assembly")
    s = theta @ phi.transpose(0, 2, 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    out = (p / p.sum(-1, keepdims=True)) @ g
    np.testing.assert_allclose(y, out.reshape(x.shape) + 0.7 * x, atol=1e-4)


# ------------------------------------------------------------------ randomness / rotations

def _random_params(module, x, seed=0):
    """Parameters from eval_shape + NumPy draws (no compiled init)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, s.dtype),
                        shapes)


def _nlsa_setup():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 8, 10, 16)), jnp.float32)
    module = NonLocalSparseAttention(chunk_size=16, n_hashes=2)
    return module, _random_params(module, x), x


class _TwoNLSA(nn.Module):
    """Two NLSAs in one model: their default (eval) rotations must differ."""

    @nn.compact
    def __call__(self, x):
        y = NonLocalSparseAttention(chunk_size=16, n_hashes=2, name="body_0")(x)
        return NonLocalSparseAttention(chunk_size=16, n_hashes=2, name="body_9")(y)


def test_eval_is_deterministic_and_independent_of_batch_and_order():
    module, params, x = _nlsa_setup()
    apply = fast_jit(lambda x: module.apply({"params": params}, x))
    y = np.asarray(apply(x))
    np.testing.assert_array_equal(np.asarray(apply(x)), y)
    np.testing.assert_allclose(np.asarray(apply(x[::-1]))[::-1], y, atol=1e-6)
    # a batch without the other items (the compile for batch 1 is the only extra cost)
    np.testing.assert_allclose(np.asarray(apply(x[1:2]))[0], y[1], atol=1e-6)


def test_rotations_come_from_lsh_rng_and_fixed_key_depends_on_layer():
    module, params, x = _nlsa_setup()

    two = {"body_0": params, "body_9": params}

    @fast_jit
    def rotations(rngs):
        _, st = _TwoNLSA().apply({"params": two}, x, rngs=rngs, mutable=["intermediates"])
        return {k: v["rotations"][0] for k, v in st["intermediates"].items()}

    fixed = rotations({})
    assert fixed["body_0"].shape == (4, 2, lsh.num_buckets(80, 16) // 2)
    np.testing.assert_array_equal(rotations({})["body_0"], fixed["body_0"])
    assert not np.allclose(fixed["body_9"], fixed["body_0"])          # per-layer key
    a = rotations({"lsh": jax.random.PRNGKey(1)})["body_0"]
    b = rotations({"lsh": jax.random.PRNGKey(2)})["body_0"]
    assert not np.allclose(a, b) and not np.allclose(a, fixed["body_0"])


def test_injected_rotations_reproduce_a_training_call():
    module, params, x = _nlsa_setup()
    apply = fast_jit(module.apply, static_argnames="mutable")
    y, st = apply({"params": params}, x, rngs={"lsh": jax.random.PRNGKey(5)},
                  mutable=("intermediates",))
    rot = st["intermediates"]["rotations"][0]
    y_arg = apply({"params": params}, x, rotations=rot)
    y_col = apply({"params": params, "lsh_rotations": st["intermediates"]}, x)
    np.testing.assert_array_equal(np.asarray(y_arg), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(y_col), np.asarray(y))
    with pytest.raises(ValueError, match="expected"):
        module.apply({"params": params}, x, rotations=rot[..., :1])


@pytest.mark.parametrize("use_rng", [False, True])
def test_gla_superbit_rotations_are_orthogonal_per_round(use_rng):
    x = jnp.zeros((1, 12, 12, 16))          # Cq = 4, nb = 10 > Cq: orthonormal rows
    module = GlobalLearnableAttention(chunk_size=16, n_hashes=2)
    rngs = {"lsh": jax.random.PRNGKey(0)} if use_rng else {}
    if use_rng:   # the training path, without the convolutions
        sample = fast_jit(lambda k: lsh.sample_rotations(k, lsh.SUPERBIT, 4, 2, 10))
        rot = np.asarray(sample(rngs["lsh"]))
    else:
        params = _random_params(module, x)
        _, st = fast_jit(lambda p: module.apply({"params": p}, x, mutable=["intermediates"]))(
            params)
        rot = np.asarray(st["intermediates"]["rotations"][0])
    assert rot.shape == (4, 2, 10)
    for r in range(2):
        np.testing.assert_allclose(rot[:, r] @ rot[:, r].T, np.eye(4), atol=1e-5)
    cols = np.asarray(lsh.fixed_rotations(0, "body_0", lsh.SUPERBIT, 8, 2, 4))  # Cq >= nb
    for r in range(2):
        np.testing.assert_allclose(cols[:, r].T @ cols[:, r], np.eye(4), atol=1e-5)


# ------------------------------------------------------------------ gradients, memory

@pytest.mark.parametrize("kind", [lsh.CROSS_POLYTOPE, lsh.SUPERBIT])
def test_gradients_match_finite_differences(kind):
    rng = np.random.default_rng(4)
    length, k = 40, 16                       # padding 8, M = 3 chunks
    q = jnp.asarray(rng.normal(size=(length, 4)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(length, 3)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(length, k)), jnp.float32)
    nb = lsh.num_buckets(length, k)
    rot = jnp.asarray(lsh.fixed_rotations(3, "t", kind, 4, 2, nb))

    def f(q, v, bias):
        return lsh.lsh_attention(q, v, rot, k, kind, bias if kind == lsh.SUPERBIT else None)

    # Hash codes are piecewise constant in q; the step is far below the margin at which a
    # bucket changes for these inputs, so finite differences see the smooth branch.
    check_grads(jax.jit(f), (q, v, bias), order=1, modes=["rev"], eps=1e-2, atol=2e-2,
                rtol=2e-2)


def _plain_chunk_attention(q, k, v, ids, bias):
    """All chunks at once, autodiff-able: gathers, look-around by concatenation, softmax."""
    def around(x):   # chunk m, then m-1 and m+1 (wrapping), along the chunk axis 1
        return jnp.concatenate([x, jnp.roll(x, 1, 1), jnp.roll(x, -1, 1)], axis=2)
    s = jnp.einsum("rmic,rmjc->rmij", q[ids], around(k[ids]))
    if bias is not None:
        s = s + jnp.swapaxes(around(bias[ids][..., :ids.shape[-1]]), -1, -2)
    o = jnp.einsum("rmij,rmjc->rmic", jax.nn.softmax(s, axis=-1), around(v[ids]))
    return o.reshape(ids.shape[0], -1, v.shape[-1]), jax.nn.logsumexp(s, -1).reshape(
        ids.shape[0], -1)


@pytest.mark.parametrize("self_keys,per_step", [(False, None), (False, 2), (True, 1),
                                                (True, 4)])
def test_chunk_attention_and_its_backward_match_autodiff(self_keys, per_step):
    """The looped chunk attention (any number of chunks per step, the last step padded)
    and its hand-written VJP equal all-chunks-at-once attention and JAX's autodiff of it;
    self_keys (keys = normalised queries, softmax shift |q|) as well."""
    rng = np.random.default_rng(5)
    length, k = 40, 16                                          # 2 groups x 3 chunks
    q = jnp.asarray(rng.normal(size=(length, 4)) * 3, jnp.float32)
    key = lsh.normalize_keys(q if self_keys else jnp.asarray(rng.normal(size=(length, 4)),
                                                             jnp.float32))
    v = jnp.asarray(rng.normal(size=(length, 3)), jnp.float32)
    bias = None if self_keys else jnp.asarray(rng.normal(size=(length, k + 2)), jnp.float32)
    ids = lsh.chunk_indices(jnp.asarray(np.stack([rng.permutation(length)] * 2), jnp.int32), k)
    cot = (jnp.asarray(rng.normal(size=(2, 3 * k, 3)), jnp.float32),
           jnp.asarray(rng.normal(size=(2, 3 * k)), jnp.float32))

    @fast_jit
    def both(q, key, v, bias):
        out, custom = jax.vjp(lambda *a: lsh.attend_chunks(
            *a[:3], ids, a[3], self_keys=self_keys, chunks_per_step=per_step), q, key, v, bias)
        want, auto = jax.vjp(lambda *a: _plain_chunk_attention(*a[:3], ids, a[3]),
                             q, key, v, bias)
        return out, want, custom(cot), auto(cot)

    out, want, custom, auto = both(q, key, v, bias)
    for c, a in zip(list(out) + list(custom), list(want) + list(auto)):
        if a is not None:
            np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=2e-5, rtol=1e-5)


def test_self_keys_refuses_a_key_bias():
    q = jnp.ones((8, 2))
    ids = jnp.zeros((1, 1, 8), jnp.int32)
    with pytest.raises(ValueError, match="self_keys"):
        lsh.attend_chunks(q, q, q, ids, jnp.ones((8, 8)), self_keys=True)


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_compiled_memory_grows_linearly_with_length():
    """XLA's compiled memory analysis: 16x the pixels costs at most ~16x the scratch
    memory for NLSA (forward + backward; 6x measured: fixed costs), while dense
    attention grows ~256x. K = 8 puts both sizes
    at the bucket cap (nb = 128); below it the hash projections [R, L, nb/2] grow with
    nb ~ L/K as in the official code."""
    c, k = 8, 8
    rot_for = lambda length: jnp.zeros((2, 2, lsh.num_buckets(length, k) // 2))

    def lsh_loss(q, v):
        rot = rot_for(q.shape[0])
        return jnp.sum(lsh.lsh_attention(q, v, rot, k, lsh.CROSS_POLYTOPE) ** 2)

    def dense_loss(q, v):
        return jnp.sum(dense.dense_attention(q, lsh.normalize_keys(q), v) ** 2)

    sizes = [32 * 32, 128 * 128]
    mem = {}
    for name, loss in [("lsh", lsh_loss), ("dense", dense_loss)]:
        grad = jax.grad(loss, argnums=(0, 1))
        mem[name] = [_temp_bytes(grad, jnp.zeros((n, 2)), jnp.zeros((n, c))) for n in sizes]
    lsh_ratio = mem["lsh"][1] / mem["lsh"][0]
    dense_ratio = mem["dense"][1] / mem["dense"][0]
    assert 4 < lsh_ratio < 24, mem
    assert dense_ratio > 150, mem
