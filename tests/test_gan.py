"""NLCUnetGAN: VGG19 loading + perceptual loss and the SN U-Net discriminator against our own
PyTorch transcriptions (architectures.md 4.4), the GAN train step (both networks trained,
D learns a toy real/fake task) and an exact resume through Orbax."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

from jaxsr import objectives  # noqa: E402
from jaxsr.models import build_model, discriminator, vgg  # noqa: E402
from tests.fast_compile import jit as fast_jit  # noqa: E402


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def gan_config(repo_root):
    spec = importlib.util.spec_from_file_location("cfg_gan", repo_root / "configs" /
                                                  "nlcunet_gan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("small")
    c.model.blocks = (0, 0, 0, 0, 0, 0)          # tiny U-Net generator (no attention)
    c.degradation.name = "bicubic"
    c.train.batch_size = 2
    c.train.patch_size = 32                      # LR 8x8 (padded to 16x16 inside G)
    c.discriminator.num_feat = 8
    c.discriminator.lr = 2e-3
    c.loss.layer_weights = {"conv1_2": 0.1, "conv2_2": 0.1}   # a short VGG for speed
    c.loss.vgg19_random = True
    return c


# ------------------------------------------------------------------------------------------
# VGG19 and the perceptual loss

def torch_vgg19_features(n_layers=None):
    """torchvision vgg19 `features` (cfg 'E'), written out: conv3+ReLU, 'M' = max-pool 2;
    only its first n_layers modules when given (the full net takes seconds to init)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
           512, 512, 512, 512, "M"]
    layers, c_in = [], 3
    for v in cfg:
        if n_layers is not None and len(layers) >= n_layers:
            break
        if v == "M":
            layers.append(tnn.MaxPool2d(2, 2))
        else:
            layers += [tnn.Conv2d(c_in, v, 3, padding=1), tnn.ReLU(inplace=False)]
            c_in = v
    return tnn.Sequential(*layers[:n_layers])


def torch_perceptual(features, x, gt, weights):
    """BasicSR PerceptualLoss(vgg19, use_input_norm, L1, pre-ReLU conv features)."""
    idx = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(t):
        out, t = {}, (t - mean) / std
        for i, layer in enumerate(features):
            t = layer(t)
            for name, j in idx.items():
                if i == j:
                    out[name] = t.clone()
        return out

    fx, fg = feats(x), feats(gt)
    return sum(w * F.l1_loss(fx[k], fg[k]) for k, w in weights.items()), fx


def test_vgg19_torchvision_state_dict_features_and_loss(tmp_path):
    torch.manual_seed(0)
    features = torch_vgg19_features().eval()
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 8)     # a real file has the classifier too
    torch.save(sd, tmp_path / "vgg19.pth")
    cfg = {"vgg19_weights": str(tmp_path / "vgg19.pth"), "vgg19_random": False}
    params = vgg.load_vgg19_params(_Cfg(cfg))

    rng = np.random.default_rng(0)
    x = rng.random((1, 32, 32, 3), dtype=np.float32)
    gt = rng.random((1, 32, 32, 3), dtype=np.float32)
    weights = vgg.DEFAULT_LAYER_WEIGHTS
    with torch.no_grad():
        ref_loss, ref_feats = torch_perceptual(features, nchw(x), nchw(gt), weights)
    model = vgg.VGG19Features()

    @fast_jit
    def run(params, x, gt):
        feats = model.apply({"params": params}, vgg.normalize_imagenet(x))
        return feats, vgg.perceptual_loss(model, params, x, gt, weights)

    feats, loss = run(params, jnp.asarray(x), jnp.asarray(gt))
    for name, f in feats.items():
        np.testing.assert_allclose(np.asarray(f), nhwc(ref_feats[name]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)

    # the torch-free .npz conversion gives the same params
    vgg._convert_main(["vgg", str(tmp_path / "vgg19.pth"), str(tmp_path / "vgg19.npz")])
    npz = vgg.load_vgg19_params(_Cfg({"vgg19_weights": str(tmp_path / "vgg19.npz")}))
    jax.tree.map(np.testing.assert_array_equal, npz, params)


class _Cfg(dict):
    """A minimal stand-in for config.loss (ConfigDict `.get`)."""


def test_gan_without_vgg_weights_stops_with_instructions(gan_config):
    cfg = gan_config.copy_and_resolve_references()
    cfg.loss.vgg19_random = False
    cfg.loss.vgg19_weights = ""
    with pytest.raises(FileNotFoundError) as e:
        objectives.make(cfg, build_model(cfg))
    msg = str(e.value)
    assert "download.pytorch.org/models/vgg19-dcbb9e9d.pth" in msg
    assert "config.loss.vgg19_weights" in msg and "python -m jaxsr.models.vgg" in msg


# ------------------------------------------------------------------------------------------
# Discriminator vs torch spectral_norm

class TorchUNetDiscriminatorSN(tnn.Module):
    """Real-ESRGAN UNetDiscriminatorSN as described in architectures.md 4.4."""

    def __init__(self, nf):
        super().__init__()
        sn = tnn.utils.spectral_norm
        self.conv0 = tnn.Conv2d(3, nf, 3, 1, 1)
        self.conv1 = sn(tnn.Conv2d(nf, nf * 2, 4, 2, 1, bias=False))
        self.conv2 = sn(tnn.Conv2d(nf * 2, nf * 4, 4, 2, 1, bias=False))
        self.conv3 = sn(tnn.Conv2d(nf * 4, nf * 8, 4, 2, 1, bias=False))
        self.conv4 = sn(tnn.Conv2d(nf * 8, nf * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(tnn.Conv2d(nf * 4, nf * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(tnn.Conv2d(nf * 2, nf, 3, 1, 1, bias=False))
        self.conv7 = sn(tnn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv8 = sn(tnn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv9 = tnn.Conv2d(nf, 1, 3, 1, 1)

    def forward(self, x):
        act = lambda t: F.leaky_relu(t, 0.2)
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        y = act(self.conv4(up(x3))) + x2
        y = act(self.conv5(up(y))) + x1
        y = act(self.conv6(up(y))) + x0
        return self.conv9(act(self.conv8(act(self.conv7(y)))))


def test_discriminator_matches_torch_spectral_norm():
    torch.manual_seed(0)
    ref = TorchUNetDiscriminatorSN(8).train()
    params, stats = {}, {}
    for i in range(10):
        conv = getattr(ref, f"conv{i}")
        w = conv.weight_orig if hasattr(conv, "weight_orig") else conv.weight
        params[f"conv{i}"] = {"kernel": jnp.asarray(w.detach().numpy().transpose(2, 3, 1, 0))}
        if conv.bias is not None:
            params[f"conv{i}"]["bias"] = jnp.asarray(conv.bias.detach().numpy())
        if hasattr(conv, "weight_u"):
            stats[f"conv{i}_sn"] = {f"conv{i}/kernel/u": jnp.asarray(conv.weight_u.numpy()[None]),
                                    f"conv{i}/kernel/sigma": jnp.ones(())}
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    with torch.no_grad():
        ref_out = nhwc(ref(nchw(x)))        # train mode: one power iteration, u updated
    model = discriminator.UNetDiscriminatorSN(num_feat=8)
    out, upd = fast_jit(lambda v, x: model.apply(v, x, update_stats=True,
                                                mutable=["batch_stats"]))(
        {"params": params, "batch_stats": stats}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-4, atol=1e-5)
    u_new = np.asarray(upd["batch_stats"]["conv3_sn"]["conv3/kernel/u"])[0]
    np.testing.assert_allclose(u_new, ref.conv3.weight_u.numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------
# The GAN objective

@pytest.fixture(scope="module")
def gan_setup(gan_config):
    obj = objectives.make(gan_config, build_model(gan_config))
    rng = np.random.default_rng(0)
    # toy task: real HR = pixel-level binary texture; fake = G's output from the 8x8 LR,
    # which is close to its bicubic upscale (smooth), so the two are separable
    hr = (rng.random((2, 32, 32, 1)) > 0.5).repeat(3, -1).astype(np.uint8) * 255
    # jit as train.py does; an 'rbg' key because partitionable threefry makes the random
    # initialisers ~4x slower to compile on CPU (26 s -> 6 s for D alone on 2 cores)
    state = fast_jit(obj.init_state)(jax.random.key(0, impl="rbg"), hr)
    return obj, fast_jit(obj.train_step), state, hr


def _leaves_differ(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_gan_step_trains_both_networks_and_d_learns(gan_setup):
    obj, step, state0, hr = gan_setup
    assert set(state0) >= {"step", "params", "opt_state", "disc_params", "disc_stats",
                           "disc_opt_state", "vgg_params"}
    state, m = step(state0, hr, jax.random.PRNGKey(1))
    assert int(state["step"]) == 1 and bool(m["finite"])
    assert _leaves_differ(state["params"], state0["params"])             # G updated
    assert _leaves_differ(state["disc_params"], state0["disc_params"])   # D updated
    assert _leaves_differ(state["disc_stats"], state0["disc_stats"])     # SN power iteration
    jax.tree.map(np.testing.assert_array_equal, state["vgg_params"], state0["vgg_params"])
    for k in ("l_pix", "l_percep", "l_g_gan", "l_d_real", "l_d_fake"):
        assert np.isfinite(float(m[k])) and float(m[k]) > 0, k
    d_losses = [float(m["l_d"])]
    for i in range(2, 14):
        state, m = step(state, hr, jax.random.PRNGKey(i))
        d_losses.append(float(m["l_d"]))
    # D starts at chance (2 ln 2) and learns to separate real ramps from G's output
    assert abs(d_losses[0] - 2 * np.log(2)) < 0.05
    assert np.mean(d_losses[-3:]) < d_losses[0] - 0.2, d_losses


def test_gan_state_orbax_roundtrip_resumes_exactly(gan_setup, tmp_path):
    obj, step, state0, hr = gan_setup
    state, _ = step(state0, hr, jax.random.PRNGKey(1))
    path = tmp_path / "ckpt"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, abstract)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    # all training state is in the dict: the same step from the restored copy is identical
    # (host copies: orbax's restored arrays would trigger a fresh compile of the step)
    restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored)
    a, ma = step(state, hr, jax.random.PRNGKey(2))
    b, mb = step(restored, hr, jax.random.PRNGKey(2))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert float(ma["l_d"]) == float(mb["l_d"]) and float(ma["loss"]) == float(mb["loss"])


def test_generator_total_is_the_weighted_sum_of_its_parts(gan_config, gan_setup):
    """total = w_pix * L1 + w_percep * perceptual + w_gan * BCE(D(sr), real), each part
    recomputed outside jaxsr.objectives (L1 and the BCE in NumPy, the perceptual loss with
    the torch VGG19 above); three distinct weights, so a swapped or dropped one shows."""
    _, _, state, hr_uint8 = gan_setup
    cfg = gan_config.copy_and_resolve_references()
    w = {"pixel_weight": 0.7, "perceptual_weight": 1.9, "gan_weight": 0.35}
    cfg.loss.update(w)
    obj = objectives.make(cfg, build_model(cfg))

    def run(state, hr_uint8):   # one program: eager ops compile one by one (slow)
        hr, lr = obj.synthesize(hr_uint8, jax.random.PRNGKey(3))
        total, (sr, parts) = obj.generator_loss(state["params"], state, lr, hr,
                                                jax.random.PRNGKey(4))
        logits, _ = obj.d_logits(state["disc_params"], state["disc_stats"], sr, False)
        return total, parts, sr, hr, logits

    total, parts, sr, hr, logits = fast_jit(run)(state, hr_uint8)
    sr32, hr32 = np.array(sr), np.array(hr)          # writable copies for torch
    assert cfg.train.loss == "l1"
    l_pix = np.mean(np.abs(sr32.astype(np.float64) - hr32))
    layers = dict(cfg.loss.layer_weights)
    last = max(i for i, n, _ in vgg.VGG19_CONVS if n in layers)
    features = torch_vgg19_features(last + 1).eval()
    for i in (i for i, _, _ in vgg.VGG19_CONVS if i <= last):
        p = state["vgg_params"][f"features_{i}"]
        features[i].weight.data = torch.from_numpy(np.array(p["kernel"]).transpose(3, 2, 0, 1))
        features[i].bias.data = torch.from_numpy(np.array(p["bias"]))
    with torch.no_grad():
        l_percep = float(torch_perceptual(features, nchw(sr32), nchw(hr32), layers)[0])
    l_gan = np.mean(np.logaddexp(0.0, -np.asarray(logits, np.float64)))   # -log sigmoid
    for name, got, ref in (("l_pix", parts["l_pix"], l_pix),
                           ("l_percep", parts["l_percep"], l_percep),
                           ("l_g_gan", parts["l_g_gan"], l_gan)):
        assert float(ref) > 1e-3, name                  # each term really contributes
        np.testing.assert_allclose(float(got), ref, rtol=1e-4, err_msg=name)
    expected = w["pixel_weight"] * l_pix + w["perceptual_weight"] * l_percep \
        + w["gan_weight"] * l_gan
    np.testing.assert_allclose(float(total), expected, rtol=1e-4)
