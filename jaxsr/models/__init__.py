"""Model registry: `config.model.name` -> `jaxsr.models.<module>.build(config)`.

Every model is a flax.linen Module called as
`model.apply({'params': p}, lr, train=bool, rngs={'lsh': key})` on NHWC float32 LR images
in [0, 1] and returns NHWC SR images in [0, 1] (not clamped). Models with hashing
attention draw rotations from the 'lsh' RNG stream when it is given (training) and use a
fixed per-layer key otherwise (deterministic evaluation).

A model module may define `input_multiple(config) -> int` (the LR side must be a multiple
of it; evaluation and inference pad by reflection and crop back),
`min_input_size(config) -> int`, `EVAL_EXTRAS` (names of per-image inputs such as
'kernel' that evaluation passes as keyword arguments when a benchmark set provides them)
`prepare_extras(config, extras) -> extras` (e.g. a kernel converted to the model's
convention) and `extra_metrics(config, model, params, lr, extras) -> dict` (more per-image
numbers for the results, e.g. kernel PSNR).
"""
import importlib

# name -> module under jaxsr.models (modules are imported lazily: only the model in use
# is loaded, and a model whose module is missing fails with a clear message).
_MODULES = {
    "bicubic": "bicubic",
    "edsr": "edsr",
    "nlsn": "nlsn",
    "dlsn": "dlsn",
    "nlcunet": "nlcunet",
    "lnln": "lnln",
    "kenet": "kenet",
    "usrnet": "usrnet",
    "kenet_usrnet": "blind",
    "gt_usrnet": "blind",
    "fsrcnn": "fsrcnn",
    "rcan": "rcan",
}


def model_module(name: str):
    if name not in _MODULES:
        raise ValueError(f"config.model.name={name!r} is not a known model; "
                         f"choose one of {sorted(_MODULES)}")
    return importlib.import_module(f"jaxsr.models.{_MODULES[name]}")


def build_model(config):
    """Builds the flax module described by `config.model` (and `config.scale`)."""
    return model_module(config.model.name).build(config)


def param_stacks(config) -> tuple:
    """The stacked blocks of the model's scanned layout (`jaxsr.models.scan.Stack`s; ()
    when it has none), whichever layout config.model.scan_blocks picks: what checkpoints
    and init_from convert between the unrolled and scanned layouts."""
    if not has_params(config):
        return ()
    fn = getattr(build_model(config), "param_stacks", None)
    return tuple(fn()) if fn else ()


def param_layout(config) -> str:
    """'scanned' or 'unrolled': the params layout of the model config.model.scan_blocks
    builds (on the platform being traced for)."""
    fn = getattr(build_model(config), "layout", None) if has_params(config) else None
    return fn() if fn else "unrolled"


def input_multiple(config) -> int:
    fn = getattr(model_module(config.model.name), "input_multiple", None)
    return int(fn(config)) if fn else 1


def min_input_size(config) -> int:
    fn = getattr(model_module(config.model.name), "min_input_size", None)
    return int(fn(config)) if fn else 1


def has_params(config) -> bool:
    return getattr(model_module(config.model.name), "HAS_PARAMS", True)


def eval_extras(config) -> tuple:
    return tuple(getattr(model_module(config.model.name), "EVAL_EXTRAS", ()))


def prepare_extras_fn(config):
    return getattr(model_module(config.model.name), "prepare_extras", lambda config, e: e)


def extra_metrics_fn(config):
    return getattr(model_module(config.model.name), "extra_metrics", None)
