"""NLCUnet: parameter count, parity with our PyTorch reference (tests/torch_refs/nlcunet.py,
written from architectures.md section 4), PyTorch bicubic skip, input padding."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import unflatten_dict

torch = pytest.importorskip("torch")
F = torch.nn.functional

from jaxsr.models import nlcunet  # noqa: E402
from jaxsr.ops import torch_bicubic  # noqa: E402
from tests.fast_compile import jit as fast_jit  # noqa: E402


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def torch_ref(repo_root):
    return _load(repo_root / "tests" / "torch_refs" / "nlcunet.py", "torch_ref_nlcunet")


def n_params(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def flax_params_from_torch(state_dict):
    """Our own key mapping (independent of jaxsr.convert): `Restorer.` dropped, sequence
    indices joined with `_`, the NLSA BasicBlock `.0` dropped, OIHW -> HWIO."""
    out = {}
    for key, value in state_dict.items():
        *mods, leaf = key.removeprefix("Restorer.").split(".")
        path = []
        for tok in mods:
            if tok.isdigit():
                if path[-1] not in ("conv_match", "conv_assembly"):
                    path[-1] = f"{path[-1]}_{tok}"
            else:
                path.append(tok)
        a = value.detach().numpy()
        if leaf == "weight":
            leaf, a = ("kernel", a.transpose(2, 3, 1, 0)) if a.ndim == 4 else ("scale", a)
        out[tuple(path) + (leaf,)] = jnp.asarray(a)
    return unflatten_dict(out)


def inject_rotations(ref, sown):
    """Copies the rotations each Flax NLSA used into the matching torch NLSA."""
    for name, module in ref.attention_modules():
        stage, idx = name.removeprefix("Restorer.").split(".")[:2]
        rot = np.array(sown[f"{stage}_{idx}"]["nla"]["rotations"][-1])
        module.rotations = torch.from_numpy(rot)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------------------


def test_param_count_x4_matches_official_model(repo_root):
    cfg = _load(repo_root / "configs" / "nlcunet.py", "cfg_nlcunet").get_config()
    model = nlcunet.build(cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 48, 48, 3)), train=False))
    assert n_params(shapes["params"]) == 18_113_619      # architectures.md 4.3 / authors' log
    assert nlcunet.input_multiple(cfg) == 4 and nlcunet.min_input_size(cfg) == 48


def test_torch_bicubic_matches_f_interpolate():
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((12, 9), (48, 36)), ((7, 13), (21, 39)), ((10, 10), (20, 20)),
                             ((16, 12), (11, 7))]:
        x = rng.random((2, h, w, 3), dtype=np.float32)
        ref = nhwc(F.interpolate(nchw(x), size=(oh, ow), mode="bicubic", align_corners=False))
        got = np.asarray(torch_bicubic.resize(jnp.asarray(x), (oh, ow)))
        np.testing.assert_allclose(got, ref, atol=2e-6)
        if oh >= h and ow >= w:   # a = -0.5 with renormalised borders = antialiased upsampling
            ref_aa = nhwc(F.interpolate(nchw(x), size=(oh, ow), mode="bicubic",
                                        align_corners=False, antialias=True))
            got_aa = torch_bicubic.resize(jnp.asarray(x), (oh, ow), a=-0.5, border="renormalize")
            np.testing.assert_allclose(np.asarray(got_aa), ref_aa, atol=2e-6)
    # the a = -0.75 skip is not jax.image.resize('cubic') (the reason this op exists)
    x = rng.random((1, 12, 12, 3), dtype=np.float32)
    diff = np.abs(np.asarray(torch_bicubic.upscale(x, 4))
                  - np.asarray(jax.image.resize(x, (1, 48, 48, 3), "cubic")))
    assert diff.max() > 1e-2


def test_padded_size_rules():
    assert nlcunet.padded_size(48, 48) == (48, 48)
    assert nlcunet.padded_size(45, 50) == (48, 52)         # multiple of 4; 12*13 >= 144
    assert nlcunet.padded_size(30, 37) == (48, 48)         # 8*10 < 144 -> raised to 48
    assert nlcunet.padded_size(200, 20) == (200, 20)       # 50*5 >= 144: no extra padding
    assert nlcunet.padded_size(5, 6, chunk_size=16) == (16, 16)


# one NLC block at each (width, resolution) the network has: nf full-res, 2nf half-res,
# 4nf quarter-res (latent: L = 144 = one chunk), 2nf full-res (decoder_block2)
TINY = dict(nf=16, blocks=(1, 1, 1, 0, 1, 0))


def test_matches_torch_reference_with_injected_rotations(torch_ref):
    torch.manual_seed(0)
    ref = torch_ref.NLCUnet(**TINY).eval()
    with torch.no_grad():   # non-trivial LayerNorm affine params
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    params = flax_params_from_torch(ref.state_dict())
    model = nlcunet.NLCUnet(scale=4, **TINY)
    run = fast_jit(lambda p, x, k: model.apply({"params": p}, x, train=True, rngs={"lsh": k},
                                               mutable=["intermediates"]))
    x = np.random.default_rng(1).random((2, 48, 48, 3), dtype=np.float32)   # latent 12x12
    y, sown = run(params, x, jax.random.PRNGKey(3))
    inject_rotations(ref, sown["intermediates"])
    with torch.no_grad():
        y_ref = nhwc(ref(nchw(x)))
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-5)
    # the comparison is sensitive to the attention: other rotations move the output
    y_other, _ = run(params, x, jax.random.PRNGKey(4))
    assert np.abs(np.asarray(y_other) - y_ref).max() > 1e-4


def test_odd_small_input_is_reflect_padded_and_cropped(torch_ref):
    """30x37 LR (not a multiple of 4, latent too small): the body runs on the reflect-padded
    48x48 LR and is cropped; the bicubic skip uses the unpadded LR."""
    cfg = dict(nf=16, blocks=(0, 0, 1, 0, 0, 0))
    torch.manual_seed(1)
    ref = torch_ref.NLCUnet(**cfg).eval()
    params = flax_params_from_torch(ref.state_dict())
    model = nlcunet.NLCUnet(scale=4, **cfg)
    x = np.random.default_rng(2).random((1, 30, 37, 3), dtype=np.float32)
    y, sown = fast_jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))(
        params, x)                                   # no 'lsh' RNG: fixed per-layer key
    assert y.shape == (1, 120, 148, 3) and np.isfinite(np.asarray(y)).all()
    inject_rotations(ref, sown["intermediates"])
    xp = np.pad(x, ((0, 0), (0, 18), (0, 11), (0, 0)), mode="reflect")
    with torch.no_grad():
        body = ref(nchw(xp)) - F.interpolate(nchw(xp), scale_factor=4, mode="bicubic",
                                             align_corners=False).clamp(0, 1)
        skip = F.interpolate(nchw(x), scale_factor=4, mode="bicubic",
                             align_corners=False).clamp(0, 1)
    expected = nhwc(body)[:, :120, :148] + nhwc(skip)
    np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5)
