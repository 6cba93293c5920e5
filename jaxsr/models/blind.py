"""Blind SR by kernel estimation + non-blind SR: 'kenet_usrnet' and 'gt_usrnet'.

* `kenet_usrnet`: KENet estimates the blur kernel from the LR image, USRNet super-resolves
  with it (the KENet paper's pipeline). A `kernel` passed at call time is ignored for SR.
* `gt_usrnet`: USRNet with the true kernel of the test set (the paper's upper bound);
  calling it without `kernel=` is an error (except in `init`).

Call: `model.apply({'params': p}, lr, kernel=None, sigma=None, train=False,
return_kernel=False)` -> SR [N, h*s, w*s, 3] (not clamped), or `(sr, kernel_used)` with
`return_kernel=True`. `kernel` is [kh, kw] or [N, kh, kw] in USRNet's convention:
LR = (HR convolved with k, circular) sampled at [0::s, 0::s]. `jaxsr.evaluate` passes the
`extras['kernel']` of blind test sets (`EVAL_EXTRAS`; `jaxsr.data.blind_sets.load_set`) and
adds `extra_metrics(...)` -> {'kernel_psnr': dB} to each image's row (gt_usrnet: inf, the
kernel is the truth). DIV2KRK's stored kernels follow KernelGAN's convention (correlation,
shifted centre of mass); `div2krk_kernel_for_usrnet` converts one. Sets made by blur
followed by MATLAB bicubic (`<Set>_gaussian8`, `<Set>_BD`) are not "blur then take every
s-th pixel": `prepare_extras` hands USRNet their effective kernel
(`bicubic_effective_kernel`); kernel PSNR still compares with the set's blur kernel.

Parameters: {'p': ..., 'h': ...} exactly as the plain 'usrnet' model (so a KAIR checkpoint
converted for 'usrnet' also loads here through `config.init_from`), plus {'kenet': ...}
for 'kenet_usrnet'. A KENet trained on its own (model 'kenet', objective 'kernel') and a
converted USRNet are put together with

  python -m jaxsr.models.blind --config configs/kenet_usrnet.py:x4 \
      --kenet_workdir KENET_DIR --usrnet_workdir USRNET_DIR --workdir OUT

after which `python -m jaxsr.main --mode evaluate --workdir OUT` evaluates the pipeline.
Training with objective 'kernel' on 'kenet_usrnet' fine-tunes only the KENet part.
"""
import argparse
import importlib.util
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.models import kenet as kenet_lib
from jaxsr.models.kernel_convention import (  # noqa: F401 (part of this model's interface)
    bicubic_effective_kernel, div2krk_kernel_for_usrnet, prepare_extras)
from jaxsr.models import usrnet as usrnet_lib

HAS_PARAMS = True
INIT_RULES = usrnet_lib.INIT_RULES      # config.model.init='torch' (KENet: torch defaults)


class BlindUSRNet(nn.Module):
    kenet: kenet_lib.KENet | None = None     # None: 'gt_usrnet' (true kernel)
    scale: int = 4
    n_iter: int = 8
    h_nc: int = 64
    out_nc: int = 3
    nc: tuple = (64, 128, 256, 512)
    nb: int = 2
    sigma: float = 0.0

    @nn.compact
    def __call__(self, lr, kernel=None, sigma=None, train: bool = False,
                 return_kernel: bool = False):
        del train
        if self.kenet is None:
            k = usrnet_lib.require_kernel(self, kernel, "gt_usrnet")
        else:
            k = self.kenet(lr)
        hypanet = usrnet_lib.HyPaNet(2 * self.n_iter, self.h_nc, name="h")
        prior = usrnet_lib.ResUNet(self.out_nc, tuple(self.nc), self.nb, name="p")
        sr = usrnet_lib.unfold(lr, k, self.sigma if sigma is None else sigma, self.scale,
                               hypanet, prior, self.n_iter)
        return (sr, k) if return_kernel else sr

    def estimate_kernel(self, lr, train: bool = False):
        """KENet's estimate only (the 'kernel' objective trains through this)."""
        if self.kenet is None:
            raise ValueError("'gt_usrnet' has no kernel estimator")
        return self.kenet(lr, train=train)


def build(config):
    m = config.model
    base = usrnet_lib.from_model_config(m, config.scale)
    estimator = None
    if m.name == "kenet_usrnet":
        estimator = kenet_lib.from_model_config(m.get("kenet", m), config.scale)
    elif m.name != "gt_usrnet":
        raise ValueError(f"jaxsr.models.blind builds 'kenet_usrnet' or 'gt_usrnet', "
                         f"not {m.name!r}")
    return BlindUSRNet(kenet=estimator, scale=base.scale, n_iter=base.n_iter, h_nc=base.h_nc,
                       out_nc=base.out_nc, nc=tuple(base.nc), nb=base.nb, sigma=base.sigma)


def min_input_size(config) -> int:
    if config.model.name == "kenet_usrnet":
        return 2 ** int(config.model.get("kenet", config.model).get("n_stages", 3))
    return 1


# Evaluation hooks (jaxsr.evaluate): the set's kernel goes into the call; kernel PSNR after.
EVAL_EXTRAS = ("kernel",)
_ESTIMATORS = {}


def _estimator(model, params):
    key = (id(model), id(params))
    if key not in _ESTIMATORS:
        _ESTIMATORS.clear()          # one evaluation at a time: keep only the latest
        _ESTIMATORS[key] = jax.jit(lambda lr: model.apply({"params": params}, lr,
                                                          method="estimate_kernel"))
    return _ESTIMATORS[key]


def extra_metrics(config, model, params, lr_uint8, extras) -> dict:
    """{'kernel_psnr': dB} of the kernel USRNet used (gt_usrnet: inf, the true kernel)."""
    if not extras or extras.get("kernel") is None:
        return {}
    if model.kenet is None:
        return {"kernel_psnr": math.inf}
    lr = jnp.asarray(np.asarray(lr_uint8, np.float32)[None] / 255.0)
    return kernel_metrics(_estimator(model, params)(lr), dict(extras, scale=config.scale))


def kernel_metrics(kernel_used, extra: dict | None) -> dict:
    """{'kernel_psnr': mean dB over the batch} when the set gives the true kernel, else {}."""
    if not extra or extra.get("kernel") is None:
        return {}
    k_true = np.asarray(extra["kernel"], np.float64)
    if extra.get("source") == "DIV2KRK" and extra.get("scale"):
        k_true = div2krk_kernel_for_usrnet(k_true, int(extra["scale"]))
    k_used = np.asarray(kernel_used, np.float64)
    if k_true.ndim == 2:
        k_true = k_true[None]
    k_used = np.broadcast_to(k_used, (k_true.shape[0],) + k_used.shape[-2:])
    psnr = kenet_lib.kernel_psnr(k_used, k_true)
    return {"kernel_psnr": float(np.mean(psnr)) if np.all(np.isfinite(psnr)) else math.inf}


# ---------------------------------------------------------------------------------------
# Putting a trained KENet and a (converted) USRNet together into one checkpoint.

def assemble_params(model, kenet_params, usrnet_params, lr_size: int = 32):
    """{'kenet': ..., 'p': ..., 'h': ...} checked leaf by leaf against `model`'s own tree."""
    from jaxsr import checkpoint
    lr = jnp.zeros((1, lr_size, lr_size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), lr))["params"]
    loaded = {k: v for k, v in usrnet_params.items() if k in ("p", "h")}
    if model.kenet is not None:
        loaded["kenet"] = kenet_params
    params, report = checkpoint.merge_params(abstract, loaded)
    bad = {k: report[k] for k in ("missing", "skipped_shape", "unexpected") if report[k]}
    if bad:
        raise ValueError(f"the KENet/USRNet checkpoints do not fit this config's model: {bad}")
    return params


def load_config(path: str):
    """A `configs/X.py[:arg]` file -> its get_config(arg)."""
    path, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("_blind_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def main(argv=None):
    from jaxsr import checkpoint
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="configs/kenet_usrnet.py[:arg]")
    ap.add_argument("--kenet_workdir", help="workdir of a trained 'kenet' model")
    ap.add_argument("--usrnet_workdir", required=True, help="workdir of a 'usrnet' checkpoint")
    ap.add_argument("--workdir", required=True, help="output workdir (params checkpoint)")
    args = ap.parse_args(argv)
    config = load_config(args.config)
    model = build(config)
    if model.kenet is not None and not args.kenet_workdir:
        ap.error("--kenet_workdir is required for 'kenet_usrnet'")
    kenet_params = checkpoint.load_params(args.kenet_workdir)[0] if args.kenet_workdir else None
    usrnet_params = checkpoint.load_params(args.usrnet_workdir)[0]
    params = assemble_params(model, kenet_params, usrnet_params)
    print(checkpoint.save_params(args.workdir, params, config))


if __name__ == "__main__":
    main()
