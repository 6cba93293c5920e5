"""VGG19 feature extractor and the BasicSR/Real-ESRGAN perceptual loss (NLCUnetGAN).

The network is torchvision's `vgg19().features` up to conv5_4 (the last layer the loss
needs); each conv is named after its index in that `nn.Sequential`, so the torch key
`features.34.weight` is the Flax path `features_34/kernel`. Features are taken *before*
the ReLU, as BasicSR's `VGGFeatureExtractor` does for layer names `conv*_*`.

Weights: ImageNet weights cannot be downloaded here. Download torchvision's
`vgg19-dcbb9e9d.pth` (the `VGG19_Weights.IMAGENET1K_V1` state_dict) elsewhere and point
`config.loss.vgg19_weights` at it (torch reads it lazily), or convert it once to a
torch-free `.npz` with `python -m jaxsr.models.vgg IN.pth OUT.npz`.
"""
import logging
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import precision

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision vgg19 (cfg 'E') `features` indices of the 16 convs, in order, with names.
# 'M' max-pools sit at indices 4, 9, 18, 27, 36; every conv is followed by a ReLU.
VGG19_CONVS = (
    (0, "conv1_1", 64), (2, "conv1_2", 64),
    (5, "conv2_1", 128), (7, "conv2_2", 128),
    (10, "conv3_1", 256), (12, "conv3_2", 256), (14, "conv3_3", 256), (16, "conv3_4", 256),
    (19, "conv4_1", 512), (21, "conv4_2", 512), (23, "conv4_3", 512), (25, "conv4_4", 512),
    (28, "conv5_1", 512), (30, "conv5_2", 512), (32, "conv5_3", 512), (34, "conv5_4", 512),
)
POOL_AFTER = ("conv1_2", "conv2_2", "conv3_4", "conv4_4")   # pools before the next block

# NLCUnetGAN / Real-ESRGAN layer weights.
DEFAULT_LAYER_WEIGHTS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0,
                         "conv4_4": 1.0, "conv5_4": 1.0}

MISSING_WEIGHTS_MSG = (
    "NLCUnetGAN's perceptual loss needs ImageNet VGG19 weights and none were found "
    "(config.loss.vgg19_weights={path!r}). They cannot be downloaded from this machine: on "
    "a machine with internet, download torchvision's VGG19 state_dict\n  " + VGG19_URL +
    "\n(or `torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict()` saved with "
    "torch.save), copy it here and set --config.loss.vgg19_weights=/abs/path/"
    "vgg19-dcbb9e9d.pth (read with torch), or convert it once to a torch-free file with\n"
    "  python -m jaxsr.models.vgg vgg19-dcbb9e9d.pth vgg19.npz\n"
    "and point config.loss.vgg19_weights at vgg19.npz. Tests may set "
    "config.loss.vgg19_random=True (random weights: NOT a perceptual loss).")


class VGG19Features(nn.Module):
    """Pre-activation features of torchvision's VGG19 at `layers` (dict name -> NHWC)."""
    layers: tuple[str, ...] = tuple(DEFAULT_LAYER_WEIGHTS)

    @nn.compact
    def __call__(self, x):
        unknown = set(self.layers) - {n for _, n, _ in VGG19_CONVS}
        if unknown:
            raise ValueError(f"unknown VGG19 layers {sorted(unknown)}")
        last = max(i for i, n, _ in VGG19_CONVS if n in self.layers)
        feats = {}
        for idx, lname, ch in VGG19_CONVS:
            if idx > last:
                break
            x = nn.Conv(ch, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{idx}")(x)
            if lname in self.layers:
                feats[lname] = x
            x = nn.relu(x)
            if lname in POOL_AFTER:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return feats


def normalize_imagenet(x01):
    return (x01 - jnp.asarray(IMAGENET_MEAN, x01.dtype)) / jnp.asarray(IMAGENET_STD, x01.dtype)


def perceptual_loss(vgg: VGG19Features, vgg_params, sr, hr, layer_weights=None,
                    compute_dtype=jnp.float32):
    """BasicSR PerceptualLoss (L1 criterion, use_input_norm, no range_norm, no style term).

    sum_k w_k * mean|phi_k(sr) - phi_k(hr)|, the HR features treated as constants.
    Inputs NHWC in [0, 1]; returns a scalar (perceptual_weight 1). The VGG19 convolutions
    run in `compute_dtype` (`jaxsr.precision`); the features are compared in float32.
    """
    layer_weights = layer_weights or DEFAULT_LAYER_WEIGHTS
    both = jnp.concatenate([sr, hr], axis=0)       # one pass for both images
    feats = precision.apply(vgg, vgg_params, normalize_imagenet(both), compute_dtype)
    n = sr.shape[0]
    loss = 0.0
    for name, w in layer_weights.items():
        f = feats[name]
        loss = loss + w * jnp.mean(jnp.abs(f[:n] - jax.lax.stop_gradient(f[n:])))
    return loss


# ----------------------------------------------------------------------------------------
# Weights: torchvision state_dict -> Flax params
# ----------------------------------------------------------------------------------------

def params_from_torch(state_dict, layers=tuple(DEFAULT_LAYER_WEIGHTS)) -> dict:
    """Flax params of `VGG19Features(layers)` from a torchvision vgg19 state_dict.

    Accepts torch tensors or NumPy arrays; keys other than the needed `features.*`
    (the classifier, deeper convs) are ignored; a missing or mis-shaped key raises.
    """
    last = max(i for i, n, _ in VGG19_CONVS if n in layers)
    params, in_ch = {}, 3
    for idx, _, ch in VGG19_CONVS:
        if idx > last:
            break
        arrays = []
        for suffix, shape in (("weight", (ch, in_ch, 3, 3)), ("bias", (ch,))):
            key = f"features.{idx}.{suffix}"
            if key not in state_dict:
                raise KeyError(f"VGG19 state_dict lacks {key!r} (is it a torchvision vgg19?)")
            a = np.asarray(_to_numpy(state_dict[key]), np.float32)
            if a.shape != shape:
                raise ValueError(f"VGG19 {key}: shape {a.shape}, expected {shape}")
            arrays.append(a)
        params[f"features_{idx}"] = {"kernel": arrays[0].transpose(2, 3, 1, 0),
                                     "bias": arrays[1]}
        in_ch = ch
    return params


def _to_numpy(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def read_torch_state_dict(path: str) -> dict:
    """A state_dict from `.pth` (torch, imported lazily), `.npz` or `.safetensors`."""
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return load_file(path)
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch; convert it to .npz elsewhere with "
                          "`python -m jaxsr.models.vgg IN.pth OUT.npz`") from e
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def random_params(layers=tuple(DEFAULT_LAYER_WEIGHTS), seed: int = 0) -> dict:
    """He-normal VGG19 weights drawn with NumPy (tests only; no XLA compile needed)."""
    rng = np.random.default_rng(seed)
    state_dict, in_ch = {}, 3
    for idx, _, ch in VGG19_CONVS:
        std = np.sqrt(2.0 / (in_ch * 9))
        state_dict[f"features.{idx}.weight"] = rng.normal(0, std, (ch, in_ch, 3, 3))
        state_dict[f"features.{idx}.bias"] = np.zeros(ch)
        in_ch = ch
    return jax.tree.map(jnp.asarray, params_from_torch(state_dict, layers))


def load_vgg19_params(loss_cfg, layers=tuple(DEFAULT_LAYER_WEIGHTS), seed=None):
    """VGG19 params for the perceptual loss from `config.loss`.

    `vgg19_weights` (path) is required unless `vgg19_random` is set, which gives random
    weights for tests and logs a loud warning. A missing file stops with instructions.
    """
    path = loss_cfg.get("vgg19_weights", "") or ""
    if loss_cfg.get("vgg19_random", False):
        logging.warning("!!! config.loss.vgg19_random=True: the perceptual loss uses a RANDOM "
                        "VGG19. Only for tests; the result is not a perceptual loss. !!!")
        return random_params(layers, seed=0 if seed is None else int(seed))
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(MISSING_WEIGHTS_MSG.format(path=path))
    params = params_from_torch(read_torch_state_dict(path), layers)
    logging.info("Loaded VGG19 weights (%d convs) from %s", len(params), path)
    return jax.tree.map(jnp.asarray, params)


def _convert_main(argv):
    """python -m jaxsr.models.vgg IN.pth OUT.npz: keep the features.* arrays as NumPy."""
    if len(argv) != 3 or not argv[2].endswith(".npz"):
        sys.exit("usage: python -m jaxsr.models.vgg vgg19-dcbb9e9d.pth vgg19.npz")
    sd = read_torch_state_dict(argv[1])
    arrays = {k: _to_numpy(v) for k, v in sd.items() if k.startswith("features.")}
    params_from_torch(arrays, tuple(n for _, n, _ in VGG19_CONVS))   # validates all 16 convs
    np.savez(argv[2], **arrays)
    print(f"wrote {len(arrays)} arrays to {argv[2]}")


if __name__ == "__main__":
    _convert_main(sys.argv)
