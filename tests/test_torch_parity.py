"""JAX models vs the project's own PyTorch references (tests/torch_refs), weights converted
both ways with jaxsr.convert: same input, same injected hash rotations, stable sort in torch.

Sizes exercise the LSH corner cases with chunk size K = 16: L = 20 (just above K: 2
buckets, 12 padded copies, 2 chunks), L = 36 (3 chunks, wrap-around look-back/forward),
L = 16 (exactly one chunk that sees itself three times) and L = 72 (5 chunks). NLSN/DLSN
use `peaked_params` (chunk scores spread over several units). Many chunks per round (15)
and mutation checks showing that these checks catch real bugs: test_parity_mutations.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxsr import convert, models  # noqa: E402
from jaxsr.config_base import base_config  # noqa: E402
from jaxsr.convert import core  # noqa: E402
from torch_refs.dlsn import DLSN  # noqa: E402
from torch_refs.edsr import EDSR  # noqa: E402
from torch_refs.nlsn import NLSN  # noqa: E402
from tests.fast_compile import jit as fast_jit  # noqa: E402

TOL = 1e-5


def make_config(name, scale, **model):
    c = base_config()
    c.model.name, c.scale = name, scale
    for k, v in model.items():
        c.model[k] = v
    return c


def random_params(config, seed=0):
    """Random values for every leaf (biases too, so they are checked)."""
    shapes = convert.abstract_params(config)
    rng = np.random.default_rng(seed)
    flat = {p: (rng.standard_normal(s.shape) * (0.5 / np.sqrt(max(np.prod(s.shape[:-1]), 1))
                                               if len(s.shape) > 1 else 0.05)).astype(np.float32)
            for p, s in shapes.items()}
    return core.unflatten(flat)


def peaked_params(config, seed=0, gains=(("head", 4.0), ("conv_match", 4.0))):
    """N(0, (gain/sqrt(fan_in))^2) kernels (gain 1 except `gains`), N(0, 0.1^2) biases:
    the larger head and conv_match weights spread the LSH chunk scores over several units
    (0.5/sqrt(fan_in) gives ~0.1: a nearly uniform softmax that hides attention bugs;
    test_parity_mutations measures the spread)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, s in convert.abstract_params(config).items():
        if len(s.shape) > 1:
            gain = next((g for part, g in gains if part in path), 1.0)
            std = gain / np.sqrt(np.prod(s.shape[:-1]))
        else:
            std = 0.1
        flat[path] = (rng.standard_normal(s.shape) * std).astype(np.float32)
    return core.unflatten(flat)


@functools.lru_cache(maxsize=None)
def jitted_apply(config_json):
    import ml_collections
    config = ml_collections.ConfigDict(__import__("json").loads(config_json))
    model = models.build_model(config)

    def run(params, x, key):
        return model.apply({"params": params}, x, train=False, rngs={"lsh": key},
                           mutable=["intermediates"])
    return fast_jit(run)


def jax_forward(config, params, x_nhwc, seed=0):
    """(SR NHWC, {flax attention module path: rotations used})."""
    y, state = jitted_apply(config.to_json())(params, jnp.asarray(x_nhwc), jax.random.key(seed))
    inter = core.flatten(state.get("intermediates", {}))
    rots = {p.rsplit("/", 1)[0]: np.asarray(v[-1] if isinstance(v, tuple) else v)
            for p, v in inter.items() if p.rsplit("/", 1)[-1].startswith("rotations")}
    return np.asarray(y), rots


def inject_rotations(config, torch_model, rotations):
    """Puts each JAX layer's rotations on the torch module the conversion table maps it to."""
    table = convert.table_for(config)
    for flax_module, rot in rotations.items():
        key, _ = core.flax_to_torch_key(table, f"{flax_module}/conv_match/kernel")
        name = key[: -len(".conv_match.0.weight")]
        torch_model.get_submodule(name).rotations = torch.from_numpy(rot.copy())
    return len(rotations)


def torch_forward(torch_model, x_nhwc):
    with torch.no_grad():
        y = torch_model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return y.numpy().transpose(0, 2, 3, 1)


def to_torch_sd(sd):
    return {k: torch.from_numpy(v) for k, v in sd.items()}


def check_both_directions(config, ref_factory, hw, n_attention, batch=1,
                          params_fn=random_params):
    """JAX->torch and torch->JAX: outputs agree to TOL, and JAX->torch->JAX is bit-exact."""
    x = np.random.default_rng(1).random((batch, *hw, 3), dtype=np.float32)
    # JAX -> torch
    params = params_fn(config)
    ref = ref_factory().eval()
    ref.load_state_dict(to_torch_sd(convert.params_to_state_dict(params, config)), strict=True)
    y_jax, rots = jax_forward(config, params, x)
    assert inject_rotations(config, ref, rots) == n_attention
    err1 = np.abs(torch_forward(ref, x) - y_jax).max()
    # torch -> JAX (torch's own random init)
    torch.manual_seed(0)
    ref2 = ref_factory().eval()
    sd = {k: v.numpy() for k, v in ref2.state_dict().items()}
    params2, warnings = convert.state_dict_to_params(sd, config)
    assert warnings == []
    y_jax2, rots2 = jax_forward(config, params2, x, seed=1)
    inject_rotations(config, ref2, rots2)
    err2 = np.abs(torch_forward(ref2, x) - y_jax2).max()
    assert y_jax.shape == (batch, hw[0] * config.scale, hw[1] * config.scale, 3)
    assert err1 <= TOL and err2 <= TOL, (err1, err2)
    # round trip JAX -> torch -> JAX is bit-identical
    back, _ = convert.state_dict_to_params(convert.params_to_state_dict(params, config), config)
    for p, v in core.flatten(params).items():
        np.testing.assert_array_equal(core.flatten(back)[p], v, err_msg=p)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_parity(scale):
    c = make_config("edsr", scale, n_resblocks=2, n_feats=8, res_scale=1.0)
    check_both_directions(c, lambda: EDSR(scale, n_resblocks=2, n_feats=8), (6, 5), 0)


# (scale, LR size): L = 20 (just above K), 36 (wrap-around over 3 chunks), 16 (L = K).
LSH_CASES = [(2, (5, 4)), (3, (6, 6)), (4, (4, 4))]


@pytest.mark.parametrize("scale,hw", LSH_CASES)
def test_nlsn_parity(scale, hw):
    # 8 ResBlocks so that the official NLSA placement gives two attention layers (body.0, body.9)
    kw = dict(n_resblocks=8, n_feats=8, res_scale=0.1, chunk_size=16, n_hashes=2)
    c = make_config("nlsn", scale, reduction=4, attn_every=8, **kw)
    check_both_directions(c, lambda: NLSN(scale, **kw), hw, n_attention=2,
                          params_fn=peaked_params)


# L = 20 with a batch of 2, L = 36, L = 72 (5 chunks)
@pytest.mark.parametrize("scale,hw,batch", [(2, (5, 4), 2), (3, (6, 6), 1), (4, (9, 8), 1)])
def test_dlsn_parity(scale, hw, batch):
    kw = dict(n_resgroups=2, n_resblocks=1, n_feats=8, res_scale=0.1, chunk_size=16, n_hashes=2)
    c = make_config("dlsn", scale, reduction=4, **kw)
    check_both_directions(c, lambda: DLSN(scale, **kw), hw, n_attention=2, batch=batch,
                          params_fn=peaked_params)


def test_nlcunet_parity():
    """NLCUnet table against the NLCUnet helper's torch reference (x4 only officially)."""
    from torch_refs.nlcunet import NLCUnet
    blocks = (1, 0, 0, 0, 0, 0)     # one NLC block: every block rule, 1/4 of the compile time
    c = make_config("nlcunet", 4, nf=16, blocks=blocks, chunk_size=16, n_hashes=2, reduction=4)
    check_both_directions(c, lambda: NLCUnet(nf=16, scale=4, blocks=blocks, chunk_size=16,
                                             n_hashes=2), (16, 20), n_attention=1)


def test_usrnet_parity():
    """USRNet table (ConvTranspose flip) against the USRNet helper's torch reference."""
    from torch_refs.usrnet import USRNet as TorchUSRNet
    c = make_config("usrnet", 2, variant="usrnet_tiny", n_iter=2, h_nc=8, nc=(8, 8, 16, 16), nb=1)
    model = models.build_model(c)
    rng = np.random.default_rng(0)
    lr = rng.random((1, 8, 8, 3), dtype=np.float32)
    k = rng.random((5, 5), dtype=np.float32)
    k /= k.sum()
    params = random_params(c)
    run = fast_jit(lambda p, x, kk: model.apply({"params": p}, x, kernel=kk, sigma=0.01))
    y_jax = np.asarray(run(params, jnp.asarray(lr), k))
    ref = TorchUSRNet(n_iter=2, h_nc=8, nc=(8, 8, 16, 16), nb=1).eval()
    ref.load_state_dict(to_torch_sd(convert.params_to_state_dict(params, c)), strict=True)
    with torch.no_grad():
        y_t = ref(torch.from_numpy(lr.transpose(0, 3, 1, 2).copy()),
                  torch.from_numpy(k)[None, None], 2, torch.full((1, 1, 1, 1), 0.01))
    err = np.abs(y_t.numpy().transpose(0, 2, 3, 1) - y_jax).max()
    assert err <= TOL, err
    back, _ = convert.state_dict_to_params(convert.params_to_state_dict(params, c), c)
    for p, v in core.flatten(params).items():
        np.testing.assert_array_equal(core.flatten(back)[p], v, err_msg=p)


def test_rcan_parity():
    from torch_refs.rcan import RCAN
    kw = dict(n_resgroups=2, n_resblocks=1, n_feats=16, reduction=4)
    check_both_directions(make_config("rcan", 4, **kw), lambda: RCAN(4, **kw), (5, 6), 0)


@pytest.mark.parametrize("scale", [2, 3])
def test_fsrcnn_parity(scale):
    """The 9x9 stride-s deconvolution with output_padding s - 1 (3-channel variant)."""
    from torch_refs.fsrcnn import FSRCNN
    c = make_config("fsrcnn", scale, d=8, s=4, m=2, color="rgb")
    check_both_directions(c, lambda: FSRCNN(scale, 3, d=8, s=4, m=2), (6, 7), 0)


@pytest.mark.parametrize("name", ["edsr", "rcan"])
def test_rgb_range_255_release_checkpoints(name):
    """EDSR-PyTorch/RCAN release models use rgb_range 255: rescaled exactly into range 1."""
    from torch_refs.rcan import RCAN
    kw = (dict(n_resblocks=2, n_feats=8) if name == "edsr" else
          dict(n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4))
    torch.manual_seed(0)
    ref = (EDSR if name == "edsr" else RCAN)(2, rgb_range=255, **kw).eval()
    c = make_config(name, 2, rgb_range=1.0, **kw, **({"res_scale": 1.0} if name == "edsr" else {}))
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    with pytest.raises(convert.ConversionError, match="pass --rgb_range=255"):
        convert.state_dict_to_params(sd, c)
    params, _ = convert.state_dict_to_params(sd, c, rgb_range=255)
    x = np.random.default_rng(2).random((1, 6, 5, 3), dtype=np.float32)
    y_jax, _ = jax_forward(c, params, x)
    err = np.abs(torch_forward(ref, x * 255) / 255 - y_jax).max()
    assert err <= TOL, err
    back = convert.params_to_state_dict(params, c, rgb_range=255)
    assert list(back) == list(sd)
    for k in sd:
        np.testing.assert_allclose(back[k], sd[k], rtol=1e-6, atol=1e-7, err_msg=k)
