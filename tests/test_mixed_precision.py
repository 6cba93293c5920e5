"""Mixed precision (`jaxsr.precision`, config.train.compute_dtype='bfloat16').

Tolerances were set from measured values with margin (2-core CPU, jax 0.10.2; the
measured numbers are also in docs/precision.md):
  * bf16 vs f32 forward, random init, natural 32x32 LR crop: PSNR measured 51.6 dB for
    NLSN (`:small` with 2 ResBlocks) and 50.4 dB for DLSN `:small`, required > 44 dB;
    EDSR `:small` through inference.bind measured 42.8 dB, required > 38 dB (res_scale 1
    lets random-init activations grow);
  * 25 Adam steps of a tiny EDSR on one batch: final loss bf16 0.0767 vs f32 0.0775 (from
    0.398), 1.1% apart; required within 5% and below half the initial loss;
  * NLSA block gradient (params and input), bf16 vs f32: cosine measured 0.9966 /
    0.9999 (2026-12-04, after the attention rework), required > 0.99;
  * chunk attention backward (custom VJP) at fixed buckets, bf16 vs f32: cosine measured
    > 0.99999 for q, v and the GLA score bias, required > 0.999.
"""
import collections

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import skimage.data

from jaxsr import inference, objectives, precision
from jaxsr.attention import NonLocalSparseAttention, lsh
from jaxsr.config_util import load_config_file
from jaxsr.models import build_model
from tests.fast_compile import jit as fast_jit

BF16 = jnp.bfloat16


def _astronaut(top, left, size):
    """A natural RGB crop in [0, 1], float32 [size, size, 3]."""
    return skimage.data.astronaut()[top:top + size, left:left + size].astype(np.float32) / 255.


def _cosine(a, b):
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)]).astype(np.float64)
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)]).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


# ------------------------------------------------------------------ policy and errors

def test_resolve_names_and_rejects_unknown_dtype():
    assert precision.resolve("float32") == jnp.float32
    assert precision.resolve("bfloat16") == BF16
    with pytest.raises(ValueError, match=r"config.train.compute_dtype='float16'"):
        precision.resolve("float16")


def test_float32_only_models_refuse_bf16():
    config = ml_collections.ConfigDict({"train": {"compute_dtype": "bfloat16"},
                                        "model": {"name": "usrnet"}})
    with pytest.raises(ValueError, match="'usrnet' supports only 'float32'"):
        precision.compute_dtype(config)
    config.train.compute_dtype = "float32"
    assert precision.compute_dtype(config) == jnp.float32


def test_cast_floating_leaves_integers_alone():
    tree = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32), "key": jax.random.PRNGKey(0)}
    out = precision.cast_floating(tree, BF16)
    assert out["w"].dtype == BF16 and out["step"].dtype == jnp.int32
    assert out["key"].dtype == jnp.uint32


# ------------------------------------------------------------------ (a) forward

@pytest.mark.parametrize("name", ["nlsn", "dlsn"])
def test_bf16_forward_close_to_f32_and_really_bf16(name):
    """NLSN/DLSN :small on a natural crop: PSNR(bf16, f32) > 44 dB (measured 51.6 and
    50.4 dB); every convolution and matmul takes bf16 operands, every exp/log (softmax,
    logsumexp, merge of rounds) runs on float32."""
    config = load_config_file(f"configs/{name}.py:small")
    if name == "nlsn":    # shrunk for test time: 2 ResBlocks, NLSAs body_0 and body_3
        config.model.n_resblocks = 2
    model = build_model(config)
    lr = jnp.asarray(_astronaut(100, 160, 32)[None])
    params = model.init({"params": jax.random.PRNGKey(0), "lsh": jax.random.PRNGKey(1)},
                        lr)["params"]

    def forward(p, x, dtype):
        return precision.apply(model, p, x, dtype)

    y32 = fast_jit(forward, static_argnums=2)(params, lr, jnp.float32)
    y16 = fast_jit(forward, static_argnums=2)(params, lr, BF16)
    assert y16.dtype == jnp.float32
    assert _psnr(y16, np.asarray(y32)) > 44.0

    counts = precision.primitive_dtypes(lambda p, x: forward(p, x, BF16), params, lr)
    by_prim = {}
    for (prim, dtypes), n in counts.items():
        by_prim.setdefault(prim, {})[dtypes] = n
    assert set(by_prim["conv_general_dilated"]) == {("bfloat16", "bfloat16")}
    # The one float32 matmul per attention layer is the hash projection (float32 by
    # design: buckets are a discrete choice); every other matmul is bf16.
    n_attention = sum("conv_match" in "/".join(str(k.key) for k in path)
                      for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]) // 2
    assert by_prim["dot_general"].pop(("float32", "float32")) == n_attention > 0
    assert set(by_prim["dot_general"]) == {("bfloat16", "bfloat16")}
    assert set(by_prim["exp"]) == {("float32",)} and set(by_prim["log"]) == {("float32",)}
    # Sanity of the check itself: the float32 program has float32 convolutions.
    counts32 = precision.primitive_dtypes(lambda p, x: forward(p, x, jnp.float32), params, lr)
    assert ("conv_general_dilated", ("float32", "float32")) in counts32


def test_inference_bind_bf16_returns_float32_and_keeps_params():
    model = build_model(load_config_file("configs/edsr.py:small"))
    lr = jnp.asarray(_astronaut(200, 200, 32)[None])
    params = model.init(jax.random.PRNGKey(0), lr)["params"]
    f32 = inference.bind(model, params)
    b16 = inference.bind(model, params, compute_dtype=BF16)
    y32, y16 = np.asarray(f32(lr)), b16(lr)
    assert y16.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(b16.params))
    np.testing.assert_array_equal(y32, np.asarray(model.apply({"params": params}, lr)))
    assert _psnr(y16, y32) > 38.0     # measured 42.8 dB


# ------------------------------------------------------------------ (b) training

def _tiny_edsr_config(dtype):
    c = load_config_file("configs/edsr.py:small")
    c.model.n_resblocks, c.model.n_feats = 1, 16
    c.train.batch_size, c.train.patch_size, c.train.lr = 4, 48, 1e-3
    c.train.lr_milestones = ()
    c.train.compute_dtype = dtype
    return c


def _run_steps(dtype, hr, n_steps):
    config = _tiny_edsr_config(dtype)
    objective = objectives.make(config, build_model(config))
    state = fast_jit(objective.init_state)(jax.random.PRNGKey(0), hr)
    step = fast_jit(objective.train_step)
    losses = []
    for i in range(n_steps):
        state, metrics = step(state, hr, jax.random.PRNGKey(i))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_bf16_training_follows_f32():
    """25 steps on one batch of 4 natural 48x48 HR crops: the bf16 loss ends within 5% of
    the f32 one (measured 1.1%) and below half the initial loss; params and optimizer
    state stay float32."""
    rng = np.random.default_rng(0)
    img = skimage.data.astronaut()
    corners = rng.integers(0, img.shape[0] - 48, (4, 2))
    hr = jnp.asarray(np.stack([img[y:y + 48, x:x + 48] for y, x in corners]))
    _, f32_losses = _run_steps("float32", hr, 25)
    state, bf16_losses = _run_steps("bfloat16", hr, 25)
    assert bf16_losses[-1] < 0.5 * bf16_losses[0]
    assert abs(bf16_losses[-1] - f32_losses[-1]) < 0.05 * f32_losses[-1]
    floats = [x for x in jax.tree.leaves((state["params"], state["opt_state"]))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)


# ------------------------------------------------------------------ (c) gradients

def test_nlsa_block_gradient_bf16_close_to_f32():
    """Gradient of an NLSA block (params and input) in bf16 vs f32: cosine > 0.99
    (measured 0.9966 params, 0.9999 input)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(_astronaut(200, 180, 32) @ rng.standard_normal((3, 16)))[None]
    w = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    block = NonLocalSparseAttention(chunk_size=32, n_hashes=2)
    params = block.init(jax.random.PRNGKey(0), x)["params"]

    def loss(p, x, dtype):
        return jnp.sum(precision.apply(block, p, x, dtype) * w)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)  # traced below too
    g32, g16 = grad(params, x, jnp.float32), grad(params, x, BF16)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    # The backward pass (custom VJP included) also runs its matmuls and convs in bf16;
    # the only float32 matmul is the hash projection.
    counts = precision.primitive_dtypes(lambda p, x: grad(p, x, BF16), params, x)
    convs = {d for (prim, d) in counts if prim == "conv_general_dilated"}
    dots = collections.Counter({d: n for (prim, d), n in counts.items()
                                if prim == "dot_general"})
    assert convs == {("bfloat16", "bfloat16")}
    assert dots.pop(("float32", "float32")) == 1
    assert set(dots) == {("bfloat16", "bfloat16")} and dots[("bfloat16", "bfloat16")] >= 6
    assert _cosine(g16[0], g32[0]) > 0.99
    assert _cosine(g16[1], g32[1]) > 0.99


def test_chunk_attention_backward_bf16_at_fixed_buckets():
    """The custom VJP of the chunk attention in bf16 vs f32, with GLA's score bias and
    all-zero keys (as after GLA's ReLU): inputs are bf16-representable, so both runs see
    the same buckets; cosine > 0.999 for dq, dv, dbias (measured > 0.99999), all finite."""
    rng = np.random.default_rng(1)
    pix = _astronaut(200, 180, 48).reshape(-1, 3)
    as_bf16 = lambda a: jnp.asarray(a, jnp.float32).astype(BF16).astype(jnp.float32)
    q = as_bf16(np.maximum(pix @ rng.standard_normal((3, 4)), 0) * 3)   # many zero rows
    v = as_bf16(pix @ rng.standard_normal((3, 16)))
    bias = as_bf16(0.5 * rng.standard_normal((q.shape[0], 32)))
    w = jnp.asarray(rng.standard_normal(v.shape), jnp.float32)
    n_buckets = lsh.num_buckets(q.shape[0], 32)
    rot = jnp.asarray(lsh.fixed_rotations(0, "t", lsh.SUPERBIT, 4, 2, n_buckets))

    def loss(q, v, bias, dtype):
        out = lsh.lsh_attention(q.astype(dtype), v.astype(dtype), rot, 32, lsh.SUPERBIT,
                                key_bias=bias.astype(dtype))
        return jnp.sum(out.astype(jnp.float32) * w)

    grad = fast_jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    g32, g16 = grad(q, v, bias, jnp.float32), grad(q, v, bias, BF16)
    for a, b in zip(g16, g32):
        assert np.isfinite(np.asarray(a)).all() and np.isfinite(np.asarray(b)).all()
        assert _cosine(a, b) > 0.999


def _dot_precisions(fn, *args):
    """The `precision` parameter of every dot_general / conv in the jaxpr of fn(*args)."""
    return [eqn.params["precision"] for eqn in precision.traced_eqns(fn, *args)
            if eqn.primitive.name in ("dot_general", "conv_general_dilated")]


def test_matmul_precision_key_sets_the_precision_of_traced_convs_and_matmuls():
    import flax.linen as nn

    class ConvDense(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(nn.Conv(4, (3, 3))(x))
    model, x = ConvDense(), jnp.ones((1, 6, 6, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    config = ml_collections.ConfigDict({"train": {"matmul_precision": "highest"}})
    name = precision.matmul_precision(config)
    highest = (jax.lax.Precision.HIGHEST,) * 2
    got = _dot_precisions(lambda p, x: precision.apply(model, p, x, jnp.float32, name),
                          params, x)
    assert len(got) == 2 and all(p == highest for p in got)
    got = _dot_precisions(lambda p, x: precision.apply(model, p, x, jnp.float32, "default"),
                          params, x)
    assert all(p != highest for p in got)
    config.train.matmul_precision = "tf32"
    with pytest.raises(ValueError, match="config.train.matmul_precision"):
        precision.matmul_precision(config)
    # the hash projection asks for HIGHEST whatever the default
    rot = jnp.ones((4, 2, 3))
    assert _dot_precisions(lambda q: lsh.hash_codes(q, rot, 6, lsh.CROSS_POLYTOPE, block=99),
                           jnp.ones((20, 4))) == [highest]
