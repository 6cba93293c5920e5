"""config.model.init='torch' (jaxsr.models.init) against torch's own initialisation of
layers with the same weight shapes: per layer the bounds and a two-sample KS test, per
model a pooled KS test of all values scaled by torch's bound; Flax's lecun-normal fails
the same test. FSRCNN's explicit normal inits are checked against torch.nn.init.normal_."""
import functools
import importlib.util
import math
import pathlib

import jax
import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")

from jaxsr import convert, objectives  # noqa: E402
from jaxsr.config_base import base_config  # noqa: E402
from jaxsr.convert import core  # noqa: E402
from jaxsr.models import build_model, init, model_module  # noqa: E402
from tests.fast_compile import jit as fast_jit  # noqa: E402

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
P_MIN = 1e-4          # fixed seeds: deterministic; a correct init gives p ~ U(0, 1)


def load_config(name, arg):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def usrnet_config():
    c = base_config()
    c.model.name, c.scale = "usrnet", 2
    for k, v in dict(variant="usrnet_tiny", n_iter=2, h_nc=8, nc=(8, 8, 16, 16), nb=1).items():
        c.model[k] = v
    return c


def nlcunet_config():
    c = load_config("nlcunet", None)
    c.model.nf, c.model.blocks, c.model.chunk_size = 16, (1, 0, 0, 0, 0, 0), 16
    return c


MODELS = {
    "nlsn": lambda: load_config("nlsn", "small"), "dlsn": lambda: load_config("dlsn", "small"),
    "edsr": lambda: load_config("edsr", None), "rcan": lambda: load_config("rcan", "small"),
    "nlcunet": nlcunet_config, "lnln": lambda: load_config("lnln", "small"),
    "kenet": lambda: load_config("kenet", "small"), "usrnet": usrnet_config,
    "fsrcnn": lambda: load_config("fsrcnn", "small"),
}


def torch_layer(kernel_shape, transposed):
    """torch's layer whose weight has the same shape (init depends on that shape only)."""
    if len(kernel_shape) == 2:
        return torch.nn.Linear(*kernel_shape)
    kh, kw, cin, cout = kernel_shape
    if transposed:
        return torch.nn.ConvTranspose2d(cin, cout, (kh, kw))
    return torch.nn.Conv2d(cin, cout, (kh, kw))     # a grouped conv's weight: cin = in/groups


@functools.lru_cache(maxsize=None)
def torch_init_of(name, seed=0):
    return torch_init(MODELS[name](), seed)


def torch_init(config, seed=0):
    flat = {p: np.zeros(s.shape, s.dtype) for p, s in convert.abstract_params(config).items()}
    rules = getattr(model_module(config.model.name), "INIT_RULES", ())
    params = fast_jit(lambda p, k: init.initialize(p, k, "torch", rules))(
        core.unflatten(flat), jax.random.key(seed))
    return {p: np.asarray(v) for p, v in core.flatten(params).items()}, rules


def default_layers(flat, rules):
    """(module path, kernel, bias or None, transposed) of the layers with torch defaults."""
    for path in sorted(p for p in flat if p.endswith("/kernel")):
        module = path[: -len("/kernel")]
        rule = init._rule_for(module, rules)
        if rule in (init.torch_default, init.torch_transposed):
            yield module, flat[path], flat.get(f"{module}/bias"), rule is init.torch_transposed


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"fsrcnn"}))    # fsrcnn: below
def test_torch_style_matches_torch_defaults(name):
    flat, rules = torch_init_of(name)
    torch.manual_seed(0)
    scaled, checked = [], 0
    for module, kernel, bias, transposed in default_layers(flat, rules):
        ref = torch_layer(kernel.shape, transposed)
        bound = 1.0 / math.sqrt(init.torch_fan_in(kernel.shape, transposed))
        w_ref = ref.weight.detach().numpy().ravel()
        assert np.isclose(np.abs(w_ref).max(), bound, rtol=0.5)     # our bound = torch's
        for ours, theirs in ((kernel, w_ref), (bias, ref.bias.detach().numpy())):
            if ours is None:
                continue
            assert np.abs(ours).max() <= bound * (1 + 1e-6), module
            if ours.size >= 64:
                assert np.abs(ours).max() >= 0.8 * bound, module
                p = stats.ks_2samp(ours.ravel(), theirs.ravel()).pvalue
                assert p > P_MIN, (module, p)
            scaled.append(ours.ravel() / bound)
        checked += 1
    assert checked >= 4
    pooled = np.concatenate(scaled)
    assert stats.kstest(pooled, stats.uniform(-1, 2).cdf).pvalue > P_MIN
    assert abs(pooled.std() - 1 / math.sqrt(3)) < 0.05


def test_lecun_normal_fails_the_same_test():
    """Flax's default (the 'flax' style) and torch's, on the same EDSR through the
    objective: the pooled test tells them apart, so it can fail."""
    c = load_config("edsr", None)
    c.model.n_resblocks, c.model.n_feats = 2, 16
    hr = np.zeros((1, 2 * c.scale * 8, 2 * c.scale * 8, 3), np.uint8)
    pooled = {}
    for style in ("flax", "torch"):
        c.model.init = style
        obj = objectives.make(c, build_model(c))
        flat = core.flatten(fast_jit(obj.init_params)(jax.random.key(0), hr))
        pooled[style] = np.concatenate([
            np.asarray(k).ravel() * math.sqrt(init.torch_fan_in(k.shape))
            for p, k in flat.items() if p.endswith("/kernel")])
    uniform = stats.uniform(-1, 2).cdf
    assert stats.kstest(pooled["torch"], uniform).pvalue > P_MIN
    assert stats.kstest(pooled["flax"], uniform).pvalue < 1e-12
    assert np.abs(pooled["flax"]).max() > 1.5         # lecun-normal: std 1/sqrt(fan_in)


def test_fsrcnn_explicit_inits_match_the_official_normals():
    flat, _ = torch_init_of("fsrcnn")
    torch.manual_seed(1)
    for path, kernel in flat.items():
        if not path.endswith("/kernel"):
            continue
        kh, kw, _, cout = kernel.shape
        std = 0.001 if path.startswith("last_part") else math.sqrt(2 / (cout * kh * kw))
        ref = torch.nn.init.normal_(torch.empty(kernel.size), 0.0, std).numpy()
        assert stats.ks_2samp(kernel.ravel(), ref).pvalue > P_MIN, path
        assert not np.any(flat[path.replace("kernel", "bias")]), path


def test_lnln_w_stays_zero_and_bad_style_is_named():
    flat, _ = torch_init_of("lnln")
    w = [v for p, v in flat.items() if p.endswith("/W/kernel")]
    assert w and not any(np.any(x) for x in w)
    with pytest.raises(ValueError, match="config.model.init='pytorch'"):
        init.initialize({}, jax.random.key(0), "pytorch")


@pytest.mark.parametrize("scale", [3, 4])
def test_scale_transfer_loads_the_body_and_starts_the_upsampler_afresh(scale, tmp_path, caplog):
    """DLSN's README recipe: x3 (and x4) from the x2 model with config.init_from. Every
    tensor whose shape fits is loaded (the official load_state_dict skips only the 'tail'
    tensors that differ): x3 re-initialises the x3 upsampler conv, x4 its second conv."""
    import logging

    from jaxsr import checkpoint, train
    src_config = load_config("dlsn", "small")
    objective = objectives.make(src_config, build_model(src_config))
    hr = np.zeros((1, 48, 48, 3), np.uint8)
    source = core.flatten(fast_jit(objective.init_params)(jax.random.key(5), hr))
    checkpoint.save_params(str(tmp_path / "x2"), core.unflatten(source), src_config)

    c = load_config("dlsn", f"x{scale},small")
    c.init_from = str(tmp_path / "x2")
    repl, _ = train.shardings()
    objective = objectives.make(c, build_model(c))
    fresh = core.flatten(jax.device_get(train.init_state(objective, c, repl)["params"]))
    mngr = checkpoint.manager(str(tmp_path / f"x{scale}"))
    with caplog.at_level(logging.INFO):
        state = train.restore_or_init(mngr, objective, c, repl, data_iter=None)
    mngr.close()
    got = core.flatten(jax.device_get(state["params"]))
    new_layer = "tail_0/layers_0" if scale == 3 else "tail_0/layers_2"
    for path, value in got.items():
        expected = fresh[path] if path.startswith(new_layer) else source[path]
        np.testing.assert_array_equal(value, expected, err_msg=path)
    assert any(p.startswith(new_layer) for p in got)
    assert any(p.startswith("body_0/") for p in got)
    reinit = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert len(reinit) == 1 and reinit[0].endswith(f"{new_layer}/bias, {new_layer}/kernel"), reinit
