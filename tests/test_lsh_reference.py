"""NLSA / GLA against the literal NumPy transcription of the official code
(tests/lsh_numpy_reference.py), and Super-Bit rotations against torch's orthogonal_."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsh_numpy_reference as ref
from jaxsr.attention import GlobalLearnableAttention, NonLocalSparseAttention, lsh


def random_params(module, x, seed):
    """Random parameters of `module` without compiling its init (shapes from eval_shape);
    weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(seed)

    def draw(s):
        std = 0.1 if len(s.shape) == 1 else 1.0 / np.sqrt(np.prod(s.shape[:-1]))
        return (rng.normal(size=s.shape) * std).astype(np.float32)

    return jax.tree.map(draw, shapes)


def _run(module, x, seed=0):
    """Module output and the (deterministic evaluation) rotations it used; the reference
    receives the same rotations, as a PyTorch parity test would inject them."""
    params = random_params(module, x, seed)
    apply = jax.jit(lambda p, x: module.apply({"params": p}, x, mutable=["intermediates"]))
    y, state = apply(params, x)
    rot = np.asarray(state["intermediates"]["rotations"][0])
    return params, np.asarray(y), rot


# (H, W, C, K, R): padding + several chunks; M = 2 (back == forward chunk);
# L < K (extension: dense); no padding and the bucket cap (nb = 128 > Cq).
NLSA_CASES = [(10, 13, 16, 16, 3), (4, 5, 16, 16, 2), (3, 3, 16, 16, 2), (24, 24, 16, 4, 2)]


@pytest.mark.parametrize("h,w,c,k,r", NLSA_CASES)
def test_nlsa_matches_numpy_reference(h, w, c, k, r):
    x = np.random.default_rng(h * w).normal(size=(2, h, w, c)).astype(np.float32)
    module = NonLocalSparseAttention(chunk_size=k, n_hashes=r, res_scale=0.5)
    params, y, rot = _run(module, jnp.asarray(x))
    assert rot.shape == (c // 4, r, lsh.num_buckets(h * w, k) // 2)
    expected = ref.nlsa(x, params, rot, k, 0.5)
    np.testing.assert_allclose(y, expected, atol=2e-4, rtol=2e-4)


# Super-Bit: Cq < nb (orthonormal rows) with padding; Cq >= nb (columns); L < K.
GLA_CASES = [(10, 13, 16, 16, 3), (9, 8, 32, 16, 2), (3, 4, 16, 16, 2)]


@pytest.mark.parametrize("h,w,c,k,r", GLA_CASES)
def test_gla_matches_numpy_reference(h, w, c, k, r):
    x = np.random.default_rng(h * w + 1).normal(size=(2, h, w, c)).astype(np.float32)
    module = GlobalLearnableAttention(chunk_size=k, n_hashes=r)
    params, y, rot = _run(module, jnp.asarray(x))
    assert rot.shape == (c // 4, r, lsh.num_buckets(h * w, k))
    expected = ref.gla(x, params, rot, k, 1.0)
    np.testing.assert_allclose(y, expected, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("kind", ["nlsa", "gla"])
def test_sorted_path_matches_numpy_reference(kind):
    """The scatter-free sorted-table path (what attention_impl='xla' runs on TPU/GPU),
    through the modules (GLA's fc included), on a padded odd-sized map."""
    h, w, c, k, r = 10, 13, 16, 16, 3
    x = np.random.default_rng(7).normal(size=(2, h, w, c)).astype(np.float32)
    module = (NonLocalSparseAttention(chunk_size=k, n_hashes=r, res_scale=0.5) if kind == "nlsa"
              else GlobalLearnableAttention(chunk_size=k, n_hashes=r))
    with lsh.use_formulation("sorted"):
        params, y, rot = _run(module, jnp.asarray(x))
    expected = (ref.nlsa(x, params, rot, k, 0.5) if kind == "nlsa"
                else ref.gla(x, params, rot, k, 1.0))
    np.testing.assert_allclose(y, expected, atol=2e-4, rtol=2e-4)


def test_parity_check_detects_a_wrong_padding_rule(monkeypatch):
    """Mutation check: padding with the round's *first* sorted entries (wrap-around)
    instead of a copy of its tail must break the parity, so the padded cases above do
    test the padding rule."""
    rng = np.random.default_rng(3)
    q, v = rng.normal(size=(1, 40, 4)), rng.normal(size=(1, 40, 8))   # L=40, K=16: p=8
    rot = rng.normal(size=(4, 2, 1))
    expected = ref.lsh_attention(q, v, rot, 16, superbit=False)

    def run():   # jitted: one compile instead of one per primitive
        fn = jax.jit(lambda q, v, rot: lsh.batched_lsh_attention(q, v, rot, 16,
                                                                 lsh.CROSS_POLYTOPE))
        return np.asarray(fn(jnp.asarray(q, jnp.float32), jnp.asarray(v, jnp.float32),
                             jnp.asarray(rot, jnp.float32)))

    np.testing.assert_allclose(run(), expected, atol=1e-4)

    def wrap_pad_chunks(order, chunk_size):
        pad = (-order.shape[1]) % chunk_size
        idx = jnp.concatenate([order, order[:, :pad]], axis=1)
        return idx.reshape(order.shape[0], -1, chunk_size)

    monkeypatch.setattr(lsh, "chunk_indices", wrap_pad_chunks)
    assert np.abs(run() - expected).max() > 1e-3


@pytest.mark.parametrize("rows,cols", [(8, 5), (4, 10)])
def test_orthogonal_matches_torch_init(rows, cols):
    torch = pytest.importorskip("torch")
    torch.manual_seed(7)
    expected = torch.nn.init.orthogonal_(torch.empty(rows, cols)).numpy()
    torch.manual_seed(7)
    gaussian = torch.empty(rows, cols).normal_(0, 1).numpy()
    got = np.asarray(lsh.orthogonal_from_gaussian(jnp.asarray(gaussian)))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    gram = got @ got.T if rows < cols else got.T @ got
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-5)


@pytest.mark.parametrize("kind", [lsh.CROSS_POLYTOPE, lsh.SUPERBIT])
@pytest.mark.parametrize("block", [64, 300, None])
def test_hash_codes_match_numpy_argmax(kind, block):
    """Blocked hashing (the CPU path) and the one-pass path give the official codes:
    argmax over xR (Super-Bit) or [xR, -xR] (cross-polytope), first index on ties (the
    zero rows tie everywhere), for L not a multiple of the block."""
    length, cq, r, nb = 1000, 8, 3, 32
    rng = np.random.default_rng(5)
    q = rng.normal(size=(length, cq)).astype(np.float32)
    q[[0, 333, 999]] = 0.0
    rot = lsh.fixed_rotations(0, "test", kind, cq, r, nb)
    rotated = np.einsum("lc,crb->rlb", q.astype(np.float64), rot.astype(np.float64))
    if kind == lsh.CROSS_POLYTOPE:
        rotated = np.concatenate([rotated, -rotated], axis=-1)
    expected = np.argmax(rotated, axis=-1)
    codes = jax.jit(lambda q: lsh.hash_codes(q, jnp.asarray(rot), nb, kind, block))(q)
    assert codes.shape == (r, length)
    assert (expected[:, [0, 333, 999]] == 0).all()
    # float32 projections may flip a near-tie that float64 resolves: allow a few.
    assert np.mean(np.asarray(codes) == expected) > 0.995
    np.testing.assert_array_equal(np.asarray(codes)[:, [0, 333, 999]], 0)
    one_pass = lsh.hash_codes(jnp.asarray(q), jnp.asarray(rot), nb, kind, block=length)
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(one_pass))


@pytest.mark.parametrize("n_buckets", [16, 2**31])   # key sort; pair sort (keys overflow)
def test_sort_order_is_the_stable_argsort(n_buckets):
    codes = np.random.default_rng(6).integers(0, 16, (3, 777)).astype(np.int32)
    order, undo = jax.jit(lsh.sort_order, static_argnums=1)(codes, n_buckets)
    expected = np.argsort(codes, axis=-1, kind="stable")
    np.testing.assert_array_equal(np.asarray(order), expected)
    np.testing.assert_array_equal(np.asarray(undo), np.argsort(expected, axis=-1))
