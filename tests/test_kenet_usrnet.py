"""KENet, USRNet and the blind KENet+USRNet pipeline (issue 7)."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxsr import objectives
from jaxsr.models import blind, build_model, kenet, usrnet
from tests.fast_compile import jit as fast_jit

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def n_params(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def random_params(module, *args, scale=0.1, seed=0, **kw):
    """Parameters of `module` filled with N(0, scale^2) in NumPy (no init compile)."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kw))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, scale, s.shape), s.dtype), shapes)


# ---------------------------------------------------------------------------------------
# USRNet

def test_usrnet_parameter_counts_match_kair():
    lr = jnp.zeros((1, 8, 8, 3))
    for variant, expected in (("usrnet", 17_016_016), ("usrnet_tiny", 590_332)):
        m = usrnet.USRNet(**usrnet.VARIANTS[variant])
        shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), lr))["params"]
        assert n_params(shapes) == expected, variant       # architectures.md section 6


def test_usrnet_matches_pytorch_reference():
    torch = pytest.importorskip("torch")
    from torch_refs import usrnet as ref
    torch.manual_seed(0)
    nc = (8, 16, 32, 64)
    tm = ref.USRNet(n_iter=2, h_nc=8, nc=nc, nb=1).eval()
    assert len(tm.state_dict()) == 28          # KAIR layout with nb=1 (42 keys with nb=2)
    params = jax.tree.map(jnp.asarray, ref.torch_to_flax(tm.state_dict()))
    m = usrnet.USRNet(scale=3, n_iter=2, h_nc=8, nc=nc, nb=1)
    # same tree as the module's own init: the documented KAIR key -> flax path rule holds
    shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))))
    assert jax.tree.structure(shapes["params"]) == jax.tree.structure(params)
    rng = np.random.default_rng(0)
    lr = rng.random((2, 7, 9, 3)).astype(np.float32)     # HR 21x27: ResUNet pads to 24x32
    k = rng.random((2, 5, 5)).astype(np.float32)
    k /= k.sum((1, 2), keepdims=True)
    sigma = np.array([0.01, 0.05], np.float32)
    out = fast_jit(lambda p, x, k, s: m.apply({"params": p}, x, kernel=k, sigma=s))(
        params, lr, k, sigma)
    with torch.no_grad():
        expect = tm(torch.from_numpy(lr).permute(0, 3, 1, 2), torch.from_numpy(k)[:, None], 3,
                    torch.from_numpy(sigma).view(-1, 1, 1, 1)).permute(0, 2, 3, 1).numpy()
    assert out.shape == (2, 21, 27, 3)
    np.testing.assert_allclose(np.asarray(out), expect, atol=1e-5)


def _decimated_blur_matrix(k, h, w, sf):
    """Dense A with A @ vec(x) = vec((x conv k, circular)[::sf, ::sf]) (one channel)."""
    a = np.zeros((h * w, h * w))
    for i in range(h * w):
        e = np.zeros(h * w)
        e[i] = 1.0
        a[:, i] = ndimage.convolve(e.reshape(h, w), k, mode="wrap").ravel()
    keep = (np.arange(h)[:, None] % sf == 0) & (np.arange(w)[None] % sf == 0)
    return a[keep.ravel()]


def test_data_step_solves_its_least_squares_problem():
    rng = np.random.default_rng(1)
    h, w, sf, alpha = 8, 6, 2, 0.3
    k = rng.random((3, 3))
    k /= k.sum()
    y = rng.random((h // sf, w // sf, 3))
    z = rng.random((h, w, 3))
    a = _decimated_blur_matrix(k, h, w, sf)
    # argmin_x ||y - A x||^2 + alpha ||x - z||^2, per channel, by a direct solve
    lhs = a.T @ a + alpha * np.eye(h * w)
    expect = np.stack([np.linalg.solve(lhs, a.T @ y[..., c].ravel() + alpha * z[..., c].ravel())
                       for c in range(3)], -1).reshape(h, w, 3)

    @fast_jit
    def solve(y, k, z):
        pre = usrnet.precompute(y[None], k[None], sf)
        return usrnet.data_step(z[None], *pre, jnp.full((1, 1, 1, 1), alpha), sf)[0]

    got = solve(y.astype(np.float32), k.astype(np.float32), z.astype(np.float32))
    np.testing.assert_allclose(np.asarray(got), expect, atol=2e-5)
    # and the classical degradation is exactly A (circular convolution, upper-left pixel)
    lr = usrnet.classical_degradation(jnp.asarray(z[None], jnp.float32), k[None], sf)[0]
    np.testing.assert_allclose(np.asarray(lr[..., 1]).ravel(), a @ z[..., 1].ravel(), atol=1e-5)


def test_usrnet_without_kernel_is_a_clear_error():
    m = usrnet.USRNet(n_iter=1, h_nc=4, nc=(4, 4, 4, 4), nb=1)
    params = random_params(m, jnp.zeros((1, 8, 8, 3)))      # init works without a kernel
    with pytest.raises(ValueError, match="non-blind"):
        m.apply({"params": params}, jnp.zeros((1, 8, 8, 3)))


# ---------------------------------------------------------------------------------------
# KENet: model, loss, metric

def test_kenet_parameter_count_and_valid_kernels():
    x = jnp.zeros((1, 96, 96, 3))
    conv = lambda i, o: 9 * i * o + o
    body = (conv(3, 64) + 2 * conv(64, 64) + conv(64, 128) + 2 * conv(128, 128)
            + conv(128, 192) + 2 * conv(192, 192) + conv(192, 256) + 2 * conv(256, 256)
            + 256 * 1024 + 1024 + 1024 * 1024 + 1024)
    for size in (11, 21):
        shapes = jax.eval_shape(lambda: kenet.KENet(kernel_size=size).init(
            jax.random.PRNGKey(0), x))["params"]
        assert n_params(shapes) == body + 1024 * size * size + size * size
    assert body + 1024 * 121 + 121 == 4_389_561            # the numbers in the docstring
    m = kenet.KENet(kernel_size=11, features=8, fc_features=32)
    params = random_params(m, x[:, :20, :20], scale=0.5)
    lr = np.random.default_rng(0).random((3, 20, 27, 3)).astype(np.float32)
    k = np.asarray(fast_jit(lambda p, x: m.apply({"params": p}, x))(params, lr))
    assert k.shape == (3, 11, 11)
    assert (k >= 0).all()
    np.testing.assert_allclose(k.sum((1, 2)), 1.0, atol=1e-5)
    assert np.abs(k - k.mean((1, 2), keepdims=True)).max() > 1e-4    # not just uniform
    with pytest.raises(ValueError, match="at least 8"):
        m.apply({"params": params}, jnp.zeros((1, 6, 20, 3)))


def load_flax_into_torch_kenet(ref, params):
    """Copies jaxsr KENet params (HWIO convs, [in, out] dense) into torch_refs.kenet."""
    import torch
    def set_conv(conv, p):
        conv.weight.data = torch.from_numpy(np.array(p["kernel"]).transpose(3, 2, 0, 1))
        conv.bias.data = torch.from_numpy(np.array(p["bias"]))
    for s, (conv, block) in enumerate(zip(ref.convs, ref.blocks)):
        set_conv(conv, params[f"conv_{s}"])
        set_conv(block.conv1, params[f"rb_{s}"]["body_0"])
        set_conv(block.conv2, params[f"rb_{s}"]["body_2"])
    for i, fc in enumerate(ref.fc):
        fc.weight.data = torch.from_numpy(np.array(params[f"fc_{i}"]["kernel"]).T.copy())
        fc.bias.data = torch.from_numpy(np.array(params[f"fc_{i}"]["bias"]))


def test_kenet_matches_torch_reference_from_the_paper():
    """KENet's forward against tests/torch_refs/kenet.py (written from the paper's
    section 2.2); odd LR sizes, so the three max-pools floor (20x27 -> 10x13 -> 5x6 -> 2x3)."""
    torch = pytest.importorskip("torch")
    from torch_refs.kenet import KENet as TorchKENet
    m = kenet.KENet(kernel_size=11, features=8, fc_features=32)
    lr = np.random.default_rng(1).random((2, 20, 27, 3)).astype(np.float32)
    params = random_params(m, jnp.asarray(lr), scale=0.5)
    k = np.asarray(fast_jit(lambda p, x: m.apply({"params": p}, x))(params, lr))
    ref = TorchKENet(kernel_size=11, width=8, fc_width=32).eval()
    assert sum(p.numel() for p in ref.parameters()) == n_params(params)
    load_flax_into_torch_kenet(ref, params)
    with torch.no_grad():
        k_ref = ref(torch.from_numpy(lr.transpose(0, 3, 1, 2).copy())).numpy()
    assert k_ref.max() > 5 * k_ref.min()                 # a peaked kernel, not uniform
    np.testing.assert_allclose(k, k_ref, rtol=1e-4, atol=1e-7)


def test_attention_loss_hand_computed():
    k_gt = np.array([[0.0, 0.05, 0.0], [0.05, 0.8, 0.05], [0.0, 0.05, 0.0]])
    k_est = np.full((3, 3), 1 / 9)
    # p_max = 0.8: lambda1 p_max = 0.008 keeps the 5 non-zero taps, lambda2 p_max = 0.08
    # keeps the centre. |errors|: corners 1/9 (x4), edges 11/180 (x4), centre 31/45.
    # Sums: all 62/45, the 5 taps 42/45, the centre 31/45; means divide by 9.
    expect = (0.01 * 62 + 0.1 * 42 + 1.0 * 31) / 405
    got = kenet.attention_loss(jnp.asarray(k_est[None]), jnp.asarray(k_gt[None]))
    np.testing.assert_allclose(float(got), expect, rtol=1e-6)
    # the taps below lambda p_max only count through rho0
    k_est2 = k_gt.copy()
    k_est2[0, 0] = 0.1
    np.testing.assert_allclose(float(kenet.attention_loss(k_est2, k_gt)), 0.01 * 0.1 / 9,
                               rtol=1e-6)


def test_kernel_psnr():
    k = np.zeros((5, 5))
    k[2, 2] = 1.0
    est = k.copy()
    est[2, 2] = 0.9
    est[2, 3] = 0.1                     # MSE = 2 * 0.01 / 25 = 8e-4
    np.testing.assert_allclose(kenet.kernel_psnr(est, k), 10 * np.log10(1 / 8e-4))
    # a 3x3 estimate against a 5x5 truth: compared inside the 5x5 grid (zero border)
    np.testing.assert_allclose(kenet.kernel_psnr(est[1:4, 1:4], k), 10 * np.log10(1 / 8e-4))
    assert np.isinf(kenet.kernel_psnr(k, k))
    np.testing.assert_allclose(float(kenet.kernel_psnr(jnp.asarray(est), jnp.asarray(k))),
                               10 * np.log10(1 / 8e-4), rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Training and the blind pipeline

def _objective(config, batch=2):
    config.train.batch_size = batch
    model = build_model(config)
    p = config.train.patch_size
    hr = np.random.default_rng(0).integers(0, 256, (batch, p, p, 3), dtype=np.uint8)
    return model, objectives.make(config, model), hr


def _one_step(config, batch=2):
    model, obj, hr = _objective(config, batch)
    with jax.default_prng_impl("rbg"):      # cheap init compile on CPU; same code path
        state = fast_jit(obj.init_state)(jax.random.PRNGKey(0), hr)
        new, metrics = fast_jit(obj.train_step)(state, hr, jax.random.PRNGKey(1))
    return model, obj, state, new, metrics


def test_kenet_config_one_train_step():
    c = load_config("kenet", "small")
    assert c.train.objective == "kernel" and c.degradation.name == "kenet"
    full = load_config("kenet", "x4")
    assert (full.train.batch_size, full.train.patch_size, full.train.lr) == (64, 384, 1e-2)
    assert full.train.lr_milestones == (200_000, 400_000) and full.train.lr_gamma == 0.1
    assert full.model.kernel_size == full.degradation.kernel_size == 21
    c.train.patch_size = 2 * 16
    _, obj, state, new, m = _one_step(c)
    assert bool(m["finite"]) and np.isfinite(float(m["loss"])) and float(m["kernel_psnr"]) > 20
    assert int(new["step"]) == 1
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["params"], new["params"])
    assert all(jax.tree.leaves(changed))
    lr, k = fast_jit(obj.synthesize)(np.full((2, 32, 32, 3), 128, np.uint8), jax.random.PRNGKey(3))
    assert lr.shape == (2, 16, 16, 3) and k.shape == (2, 11, 11)
    np.testing.assert_allclose(np.asarray(k).sum((1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lr), 128 / 255, atol=1e-6)   # blur keeps a constant


def test_kenet_usrnet_pipeline_trains_only_kenet_and_evaluates():
    c = load_config("kenet_usrnet", "small")
    c.train.patch_size = 2 * 16
    model, obj, hr = _objective(c)
    # init_state is the one of the 'kenet' test; random params keep this test's compiles down
    params = random_params(model, jnp.zeros((1, 16, 16, 3)), scale=0.05)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": obj.tx.init(params["kenet"])}
    new, m = fast_jit(obj.train_step)(state, hr, jax.random.PRNGKey(1))
    assert bool(m["finite"]) and set(params) == {"kenet", "p", "h"}
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, new["params"])
    assert all(jax.tree.leaves(same["p"])) and all(jax.tree.leaves(same["h"]))
    assert not all(jax.tree.leaves(same["kenet"]))
    # evaluation: SR with KENet's kernel equals 'gt_usrnet' (same USRNet params) given it
    gc = load_config("kenet_usrnet", "small,gt")
    gt = build_model(gc)
    usr_params = {k: params[k] for k in ("p", "h")}
    lr = np.random.default_rng(2).integers(0, 256, (13, 16, 3), dtype=np.uint8)
    x = jnp.asarray(lr[None] / 255.0, jnp.float32)

    @fast_jit
    def both(params, x):
        sr, k_used = model.apply({"params": params}, x, return_kernel=True)
        return sr, k_used, gt.apply({"params": usr_params}, x, kernel=k_used)

    sr, k_used, sr_gt = both(params, x)
    assert sr.shape == (1, 26, 32, 3) and k_used.shape == (1, 11, 11)
    np.testing.assert_allclose(np.asarray(sr_gt), np.asarray(sr), atol=1e-5)
    with pytest.raises(ValueError, match="non-blind"):
        gt.apply({"params": usr_params}, x)
    # kernel PSNR hook of jaxsr.evaluate: KENet's estimate against the set's kernel
    k_true = np.asarray(k_used[0], np.float64)
    k_off = k_true.copy()
    k_off[5, 5] += 0.01
    row = blind.extra_metrics(c, model, params, lr, {"kernel": k_off})
    np.testing.assert_allclose(row["kernel_psnr"], 10 * np.log10(121 / 1e-4), atol=0.05)
    assert blind.extra_metrics(gc, gt, usr_params, lr, {"kernel": k_true}) == {
        "kernel_psnr": float("inf")}
    assert blind.extra_metrics(c, model, params, lr, {}) == {}
    assembled = blind.assemble_params(model, params["kenet"], usr_params, lr_size=16)
    assert jax.tree.structure(assembled) == jax.tree.structure(params)


def test_div2krk_kernel_conversion_reproduces_its_lr():
    """KernelGAN-convention kernel -> USRNet convention: same LR from both recipes."""
    from jaxsr.data import kernels
    k = kernels.gaussian_kernel_np(11, 1.2, 2.0, 0.4)
    k = k * (1 + 0.2 * np.random.default_rng(0).random(k.shape))    # break the symmetry
    k /= k.sum()
    hr = np.random.default_rng(1).random((40, 40))
    # DIV2KRK recipe: correlate with the shifted kernel, keep [::s, ::s]
    from scipy.ndimage import center_of_mass, shift
    want = np.array(k.shape) // 2 + 0.5 * (2 - np.array(k.shape) % 2)
    vec = want - np.array(center_of_mass(k))
    ks = shift(np.pad(k, int(np.ceil(np.abs(vec).max())) + 1), vec)
    lr_ref = ndimage.correlate(hr, ks, mode="wrap")[::2, ::2]
    ku = blind.div2krk_kernel_for_usrnet(k, 2)
    lr = ndimage.convolve(hr, ku, mode="wrap")[::2, ::2]
    np.testing.assert_allclose(lr, lr_ref, atol=2e-3)
