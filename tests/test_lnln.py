"""LNLN (issue 7): parameter budget, region non-local module, shapes, one train step."""
import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import objectives
from jaxsr.models import build_model, lnln
from tests.fast_compile import jit as fast_jit

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg=None):
    spec = importlib.util.spec_from_file_location("cfg_lnln", REPO / "configs" / "lnln.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def count(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def random_params(module, x, scale=0.1, seed=0):
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, scale, s.shape), s.dtype), shapes)


def paper_parameter_count(scale, c=64, groups=5, blocks=37, ca_reduction=16):
    """LNLN's parameters by arithmetic per layer, from the paper's description (Sec. 2,
    Fig. 1-2) on DRCA/RCAN's layout, not from the model code. The paper fixes: a 3x3 DSC
    (depthwise k x k + bias, then pointwise 1x1 + bias) for the shallow features; an
    embedded-Gaussian non-local block (theta, phi, g: 1x1 to C/2; W: 1x1 back to C)
    after it and after the long skip; DSC residual blocks with channel attention in five
    residual groups, each closed by a DSC; DRCA's dense 1x1 fusions and final 1x1
    projection; conv + PixelShuffle upscaling; a last 3x3 conv to RGB. Width 64, CA
    reduction 16 and 37 blocks per group are the open choices (lnln.py docstring)."""
    def conv(cin, cout, k=1):
        return k * k * cin * cout + cout

    def dsc(cin, cout, k=3):
        return (k * k * cin + cin) + conv(cin, cout)

    non_local = 3 * conv(c, c // 2) + conv(c // 2, c)
    channel_attention = conv(c, c // ca_reduction) + conv(c // ca_reduction, c)
    group = blocks * (2 * dsc(c, c) + channel_attention) + dsc(c, c)
    dense = sum(conv(c * (g + 1), c) for g in range(1, groups))   # concat(F0, out_1..g)
    projection = conv(c * groups, c)
    upsampler = {2: [4], 3: [9], 4: [4, 4]}[scale]                  # r*r channel factors
    up = sum(dsc(c, c * f) for f in upsampler)
    return (dsc(3, c) + 2 * non_local + groups * group + dense + projection + up
            + conv(c, 3, 3))


@functools.lru_cache(maxsize=None)
def lnln_shapes(scale, c=64, groups=5, blocks=37):
    """Parameter shapes (no compute; tracing the full model takes ~5 s on 2 cores)."""
    model = lnln.LNLN(scale=scale, n_feats=c, n_groups=groups, n_blocks=blocks)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 8, 8, 3))))["params"]


# the paper's network at x4; x2/x3 (other upsamplers) on a small variant for speed
PAPER_SIZE = (64, 5, 37)     # width, groups, blocks per group (lnln.py defaults)


@pytest.mark.parametrize("scale,size", [(4, PAPER_SIZE), (2, (32, 3, 2)), (3, (32, 3, 2))])
def test_parameter_count_derived_from_the_paper(scale, size):
    total = count(lnln_shapes(scale, *size))
    assert total == paper_parameter_count(scale, *size)
    if scale == 4:
        assert abs(total - 2.04e6) / 2.04e6 < 0.01          # the paper's 2.04M (Table 2)


def test_parameter_count_near_paper():
    shapes = lnln_shapes(4, *PAPER_SIZE)
    # one lightweight residual group, by hand: 37 blocks of two DSCs (depthwise 3x3 +
    # pointwise 64x64, biases) and channel attention 64 -> 4 -> 64, then one DSC
    dsc = 9 * 64 + 64 + 64 * 64 + 64
    block = 2 * dsc + (64 * 4 + 4) + (4 * 64 + 64)
    assert count(shapes["body_0"]) == 37 * block + dsc == 381_460   # the paper's 0.38M
    assert set(shapes) == {"head", "nl_head", *(f"body_{i}" for i in range(5)),
                           *(f"fuse_{i}" for i in range(1, 5)), "project", "nl_tail",
                           "tail_0", "tail_1"}
    # DRCA dense connections: group g fuses the shallow features and g earlier outputs
    for g in range(1, 5):
        assert shapes[f"fuse_{g}"]["kernel"].shape == (1, 1, 64 * (g + 1), 64)


def _region_nonlocal_numpy(x, p, grid=2):
    """Literal per-region embedded-Gaussian non-local block (Wang et al.), NumPy."""
    conv1 = lambda t, q: t @ q["kernel"][0, 0] + q["bias"]
    n, h, w, c = x.shape
    out = np.zeros_like(x)
    hs, ws = [0, h // 2, h], [0, w // 2, w]
    for b in range(n):
        for r in range(grid):
            for q in range(grid):
                reg = x[b, hs[r]:hs[r + 1], ws[q]:ws[q + 1]].reshape(-1, c)
                th, ph, g = conv1(reg, p["theta"]), conv1(reg, p["phi"]), conv1(reg, p["g"])
                f = th @ ph.T
                a = np.exp(f - f.max(1, keepdims=True))
                a /= a.sum(1, keepdims=True)
                z = reg + conv1(a @ g, p["W"])
                out[b, hs[r]:hs[r + 1], ws[q]:ws[q + 1]] = z.reshape(hs[r + 1] - hs[r], -1, c)
    return out


def test_region_nonlocal_matches_numpy_and_stays_in_its_cell():
    m = lnln.RegionNonLocal(reduction=2)
    x = np.random.default_rng(0).normal(size=(2, 7, 9, 8)).astype(np.float32)   # odd sizes
    p = random_params(m, x, scale=0.5)
    f = fast_jit(lambda p, x: m.apply({"params": p}, x))
    y = np.asarray(f(p, x))
    np.testing.assert_allclose(y, _region_nonlocal_numpy(x.astype(np.float64),
                                                         jax.tree.map(np.asarray, p)),
                               atol=1e-4)
    # each region attends only within itself: changing the bottom-right cell leaves the rest
    x2 = x.copy()
    x2[:, 3:, 4:] += 1.0
    y2 = np.asarray(f(p, x2))
    np.testing.assert_array_equal(y2[:, :3], y[:, :3])
    np.testing.assert_array_equal(y2[:, 3:, :4], y[:, 3:, :4])
    assert np.abs(y2[:, 3:, 4:] - y[:, 3:, 4:]).max() > 0.5
    # W starts at zero: a freshly initialised block is the identity
    p0 = m.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(np.asarray(m.apply(p0, x)), x)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shapes_all_scales(scale):
    m = lnln.LNLN(scale=scale, n_feats=8, n_groups=2, n_blocks=1, reduction=4)
    x = np.random.default_rng(scale).random((1, 5, 7, 3)).astype(np.float32)
    p = random_params(m, x)
    y = m.apply({"params": p}, x)
    assert y.shape == (1, 5 * scale, 7 * scale, 3)
    assert np.isfinite(np.asarray(y)).all()


def test_bad_scale_is_a_clear_error():
    with pytest.raises(ValueError, match="scale 2, 3 or 4"):
        jax.eval_shape(lambda: lnln.LNLN(scale=5, n_feats=8, n_groups=1, n_blocks=1).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3))))


def test_config_and_one_train_step():
    full = load_config("x4")
    assert (full.train.lr, full.train.b1, full.train.b2, full.train.eps) == (1e-4, 0.9, 0.99, 1e-8)
    assert full.train.loss == "l1" and full.degradation.name == "bicubic"
    assert full.train.lr_halve_every == 200_000 and full.train.patch_size == 4 * 48
    c = load_config("small")
    c.train.batch_size, c.train.patch_size = 2, 2 * 12
    model = build_model(c)
    obj = objectives.make(c, model)
    hr = np.random.default_rng(0).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    # NumPy-filled params instead of init_state (its compile is the costly part on CPU)
    params = random_params(model, jnp.zeros((1, 12, 12, 3)), scale=0.1)
    params["nl_head"]["W"] = jax.tree.map(jnp.zeros_like, params["nl_head"]["W"])
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": obj.tx.init(params)}
    new, metrics = fast_jit(obj.train_step)(state, hr, jax.random.PRNGKey(1))
    assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"]))
    assert int(new["step"]) == 1
    moved = {jax.tree_util.keystr(k): bool(jnp.any(a != b)) for (k, a), b in zip(
        jax.tree_util.tree_leaves_with_path(state["params"]), jax.tree.leaves(new["params"]))}
    # theta/phi/g get no gradient while W is zero (as at init: the block is the identity)
    assert not moved["['nl_head']['theta']['kernel']"] and moved["['nl_head']['W']['kernel']"]
    del moved["['nl_head']['theta']['kernel']"], moved["['nl_head']['theta']['bias']"]
    for name in ("phi", "g"):
        del moved[f"['nl_head']['{name}']['kernel']"], moved[f"['nl_head']['{name}']['bias']"]
    assert all(moved.values()), [k for k, v in moved.items() if not v]
