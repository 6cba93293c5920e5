"""FSRCNN and RCAN against independent PyTorch references (tests/torch_refs), and the GLA
plug-in (jaxsr.models.plugin) in EDSR / RCAN / FSRCNN."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import config_util
from jaxsr.models import edsr, fsrcnn, plugin, rcan

torch = pytest.importorskip("torch")
from tests.torch_refs import fsrcnn as torch_fsrcnn  # noqa: E402
from tests.torch_refs import rcan as torch_rcan  # noqa: E402
from tests.fast_compile import jit as fast_jit  # noqa: E402


def torch_to_flax(state_dict) -> dict:
    """Official key -> Flax path: a numeric segment joins its parent with '_', the EDSR
    upsampler's Sequential index becomes `layers_<i>`; conv/deconv weights (2, 3, 1, 0)."""
    params = {}
    for key, t in state_dict.items():
        if "mean" in key:                        # frozen MeanShift: constants in Flax
            continue
        *mods, leaf = key.split(".")
        path = []
        for m in mods:
            if m.isdigit() and path:
                path[-1] += f"_{m}"
            else:
                path.append(m)
        if path[0].startswith("tail_0_"):
            path = ["tail_0", "layers_" + path[0].rsplit("_", 1)[1]] + path[1:]
        v = t.detach().numpy()
        if leaf == "weight" and v.ndim == 4:
            v, leaf = v.transpose(2, 3, 1, 0), "kernel"
        node = params
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(v)
    return params


def param_shapes(model, x):
    """The params tree as ShapeDtypeStructs: no init compile (slow on CPU, not needed)."""
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.asarray(x))["params"]


def random_params(model, x, std=0.1):
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype),
                        param_shapes(model, x))


def assert_same_tree(a, b):
    sa = jax.tree_util.tree_map(jnp.shape, a)
    sb = jax.tree_util.tree_map(jnp.shape, b)
    assert sa == sb


def test_rcan_matches_torch_reference():
    torch.manual_seed(0)
    ref = torch_rcan.RCAN(2, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4).eval()
    model = rcan.RCAN(scale=2, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4)
    x = np.random.default_rng(0).random((1, 12, 10, 3), np.float32)
    params = torch_to_flax(ref.state_dict())
    assert_same_tree(param_shapes(model, x), params)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    got = fast_jit(model.apply)({"params": params}, x)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


@pytest.mark.parametrize("scale", [2, 3])
def test_fsrcnn_y_network_matches_torch_reference(scale):
    torch.manual_seed(scale)
    ref = torch_fsrcnn.FSRCNN(scale).eval()
    for p in ref.parameters():       # a visible deconvolution (its init is ~1e-3 scale)
        p.data.normal_(0, 0.1)
    model = fsrcnn.FSRCNN(scale=scale)
    x = np.random.default_rng(scale).random((2, 9, 11, 3), np.float32)
    params = torch_to_flax(ref.state_dict())
    assert_same_tree(param_shapes(model, x), params)
    out = np.asarray(fast_jit(model.apply)({"params": params}, x))
    assert out.shape == (2, 9 * scale, 11 * scale, 3)
    ycc = np.asarray(x, np.float64) @ fsrcnn.RGB2YCC.T + fsrcnn.YCC_OFFSET
    with torch.no_grad():
        want_y = ref(torch.from_numpy(ycc[..., :1].astype(np.float32)).permute(0, 3, 1, 2))
    got_ycc = np.asarray(out, np.float64) @ fsrcnn.RGB2YCC.T + fsrcnn.YCC_OFFSET
    np.testing.assert_allclose(got_ycc[..., 0], want_y[:, 0].numpy(), atol=2e-5)
    # Chroma is MATLAB bicubic of the LR chroma (float64 NumPy twin of jaxsr.ops.imresize).
    from jaxsr.ops.imresize import imresize_np
    want_cbcr = np.stack([imresize_np(c, float(scale)) for c in ycc[..., 1:]])
    np.testing.assert_allclose(got_ycc[..., 1:], want_cbcr, atol=2e-5)


def test_full_size_parameter_counts():
    """Official counts minus the 24 frozen MeanShift values; FSRCNN's 12,464 weights."""
    def count(spec):
        c = config_util.load_config_file(spec)
        from jaxsr import summary
        return summary.count_params(summary.param_shapes(c)[1])
    ref = torch_rcan.RCAN(2)
    assert count("configs/rcan.py") == sum(p.numel() for p in ref.parameters()) - 24 == 15_444_643
    weights = sum(p.numel() for n, p in torch_fsrcnn.FSRCNN(3).named_parameters()
                  if n.endswith("weight") and p.ndim == 4)
    assert weights == 12_464
    assert count("configs/fsrcnn.py:x3") == sum(p.numel() for p in torch_fsrcnn.FSRCNN(3).parameters())


def _gla_cfg(spec, positions=()):
    c = config_util.load_config_file(spec)
    c.model.attention, c.model.attention_positions = "gla", positions
    c.model.chunk_size, c.model.n_hashes = 16, 2
    return c


@pytest.mark.parametrize("spec,tiny,positions,want", [
    ("configs/edsr.py:small", dict(n_resblocks=2, n_feats=8), (0, 2), {"gla_0", "gla_2"}),
    ("configs/rcan.py:small", dict(n_feats=8, reduction=4), (), {"gla_1"}),
    ("configs/fsrcnn.py:small", dict(d=16, s=4, m=1), (), {"gla_3"}),
])
def test_gla_plugin_inserts_blocks(spec, tiny, positions, want):
    from jaxsr.models import build_model
    plain = config_util.load_config_file(spec)
    cfg = _gla_cfg(spec, positions)
    for c in (plain, cfg):
        c.model.update(tiny)
    x = jnp.asarray(np.random.default_rng(0).random((1, 16, 16, 3), np.float32))
    p_plain = param_shapes(build_model(plain), x)
    model = build_model(cfg)
    params = random_params(model, x)
    assert set(params) - set(p_plain) == want and set(p_plain) <= set(params)
    assert params["gla_" + sorted(want)[0][4:]]["fc_0"]["kernel"].shape[-1] == 16   # chunk
    fn = fast_jit(lambda p, x, k: model.apply({"params": p}, x, train=True, rngs={"lsh": k}))
    a, b = fn(params, x, jax.random.PRNGKey(1)), fn(params, x, jax.random.PRNGKey(2))
    assert a.shape == (1, 16 * cfg.scale, 16 * cfg.scale, 3) and bool(jnp.all(jnp.isfinite(a)))
    assert float(jnp.max(jnp.abs(a - b))) > 0      # rotations come from the 'lsh' stream


def test_plugin_errors_name_the_key():
    c = _gla_cfg("configs/edsr.py:small", (9,))
    c.model.n_resblocks, c.model.n_feats = 2, 8
    with pytest.raises(ValueError, match=r"attention_positions=\(9,\).*outside 0..2"):
        edsr.build(c).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    c.model.attention = "nlsa"
    with pytest.raises(ValueError, match="config.model.attention='nlsa'"):
        edsr.build(c)
    assert plugin.spec_from_config(config_util.load_config_file("configs/edsr.py").model,
                                   (8,)) is None
    with pytest.raises(ValueError, match="unknown arg"):
        config_util.load_config_file("configs/rcan.py:big")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_subpixel_transposed_conv_equals_flax_conv_transpose(scale):
    """FSRCNN's deconvolution as phases + pixel shuffle equals Flax's ConvTranspose (torch
    padding 4, output_padding scale-1) with the same parameters, at every scale."""
    lo = 9 - 1 - 4
    ref = nn.ConvTranspose(3, (9, 9), strides=(scale, scale), transpose_kernel=True,
                           padding=((lo, lo + scale - 1),) * 2,
                           kernel_init=nn.initializers.normal(1.0),
                           bias_init=nn.initializers.normal(1.0))
    x = jax.random.normal(jax.random.PRNGKey(scale), (2, 7, 5, 6))
    params = ref.init(jax.random.PRNGKey(0), x)
    got = fsrcnn.SubPixelConvTranspose(3, 9, scale, padding=4).apply(params, x)
    want = ref.apply(params, x)
    assert got.shape == want.shape == (2, 7 * scale, 5 * scale, 3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-5)
