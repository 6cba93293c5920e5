"""Config-level conversion API (what the CLI calls).

    sd = params_to_state_dict(params, config)            # Flax -> {torch key: ndarray}
    params, warnings = state_dict_to_params(sd, config)  # strict torch -> Flax
    export_workdir(config, workdir, "model.pth")         # checkpoint -> .pth/.safetensors
    import_file(config, "model.pth", workdir)            # .pth/.safetensors -> checkpoint
Neither replaces nor deletes anything that exists (see import_target, fileio).

EMA weights travel in BasicSR's layout: a checkpoint with 'params_ema' becomes a .pth
{'params': state_dict, 'params_ema': state_dict} (a .safetensors holds one flat state_dict:
the EMA weights unless config.eval.use_ema is False), and such a .pth becomes a params
checkpoint with both. Without EMA the .pth is the flat state_dict, as always.

Layouts (config.model.scan_blocks): the tables speak the unrolled, per-layer layout. Params
of a scanned model are unstacked before `to_torch` and stacked after `from_torch`, so
both layouts give and take the same PyTorch keys.
"""
import functools
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.convert import core, tables


# Models without a table, and why (shown instead of a bare "no table").
NO_TABLE = {
    "kenet": "KENet has no public PyTorch implementation, hence no official key names",
    "lnln": "LNLN has no public PyTorch implementation, hence no official key names",
    "kenet_usrnet": ("KENet has no PyTorch implementation; convert the USRNet part with "
                     "model 'usrnet' and combine it with a KENet by `python -m jaxsr.models.blind`"),
    "bicubic": "the bicubic baseline has no parameters",
}


def table_for(config) -> core.Table:
    name = config.model.name
    if name not in tables.TABLES:
        why = f" ({NO_TABLE[name]})" if name in NO_TABLE else ""
        raise core.ConversionError(
            f"no PyTorch conversion table for config.model.name={name!r}{why}; "
            f"tables exist for {sorted(tables.TABLES)}")
    return tables.TABLES[name]


def _init_side(config) -> int:
    """A square LR size every model accepts, for tracing `init` (params never depend on it)."""
    from jaxsr import models
    side = max(models.min_input_size(config), 8)
    chunk = config.model.get("chunk_size", 0) if "model" in config else 0
    side = max(side, math.isqrt(max(int(chunk or 0) - 1, 0)) + 1)
    mult = models.input_multiple(config)
    return -(-side // mult) * mult


def abstract_params(config) -> dict:
    """{flax path: ShapeDtypeStruct} of the model the config describes, in the unrolled
    layout the tables use (no compute)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.scan_blocks = "false"
    return dict(_abstract_params(config.to_json(sort_keys=True)))


def unrolled_params(params, config):
    """The params in the per-layer layout of the tables (unstacked if scanned)."""
    from jaxsr import models
    from jaxsr.models import scan
    stacks = models.param_stacks(config)
    return scan.convert(params, stacks, "unrolled") if stacks else params


def model_layout_params(params, config):
    """Per-layer params in the layout of the config's model (stacked if it scans)."""
    from jaxsr import models
    from jaxsr.models import scan
    stacks = models.param_stacks(config)
    return scan.convert(params, stacks, models.param_layout(config)) if stacks else params


@functools.lru_cache(maxsize=16)
def _abstract_params(config_json: str) -> tuple:
    # Tracing a big model takes seconds; a conversion needs the tree 1-3 times per config.
    from jaxsr import config_util, models
    config = config_util.config_from_json(config_json)
    if not models.has_params(config):
        raise core.ConversionError(f"model {config.model.name!r} has no parameters to convert")
    model = models.build_model(config)
    side = _init_side(config)
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    rngs = {"params": jax.random.key(0), "lsh": jax.random.key(1)}
    variables = jax.eval_shape(functools.partial(model.init, train=False), rngs, x)
    return tuple(core.flatten(variables["params"]).items())


def check_params(params, config, source: str = "params") -> None:
    """The Flax params have exactly the config's tree and shapes (else lists all problems)."""
    want = abstract_params(config)
    got = core.flatten(unrolled_params(params, config))
    missing = [p for p in want if p not in got]
    unexpected = [p for p in got if p not in want]
    wrong = [f"{p}: {tuple(np.shape(got[p]))}, expected {want[p].shape}"
             for p in want if p in got and tuple(np.shape(got[p])) != want[p].shape]
    if missing or unexpected or wrong:
        parts = [f"{source} do not match config.model.name={config.model.name!r} "
                 f"scale={config.scale}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatches", wrong)):
            if items:
                parts.append(core._fmt_list(title, items))
        raise core.ConversionError("\n".join(parts))


def _model_range(config) -> float:
    return float(config.model.get("rgb_range", 1.0))


def _with_range(config, rgb_range: float):
    """A copy of the config whose MeanShift constants are those of `rgb_range`."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.model.rgb_range = float(rgb_range)
    return c


def params_to_state_dict(params, config, rgb_range: float | None = None) -> dict[str, np.ndarray]:
    """Flax params -> official PyTorch state_dict (float32 NumPy arrays, official key order).

    `rgb_range`: write the tensors for this pixel range (e.g. 255 for EDSR-PyTorch's test
    scripts) instead of the config's; exact for the tables that define `range_scaling`.
    """
    table = table_for(config)
    params = unrolled_params(params, config)
    if rgb_range is None or float(rgb_range) == _model_range(config):
        return core.to_torch(table, params, config)
    sd = core.to_torch(table, params, _with_range(config, rgb_range))
    return core.rescale_range(table, sd, _model_range(config) / float(rgb_range))


def guess_architectures(keys) -> list[str]:
    """Names of the tables that can place every key (for 'wrong architecture' hints)."""
    return [name for name, t in tables.TABLES.items() if core.fits(t, list(keys))]


def state_dict_to_params(state_dict, config, source: str = "checkpoint",
                         rgb_range: float | None = None):
    """Strict torch state_dict -> (Flax params, warnings); ConversionError lists every problem.

    `rgb_range`: the pixel range the checkpoint was made for (EDSR-PyTorch/RCAN releases:
    255) when it differs from the config's; the tensors are rescaled exactly.
    """
    table = table_for(config)
    expected = abstract_params(config)
    if rgb_range is not None and float(rgb_range) != _model_range(config):
        state_dict = core.rescale_range(table, state_dict, float(rgb_range) / _model_range(config))
        config = _with_range(config, rgb_range)     # MeanShift constants of the file's range
    try:
        params, warnings = core.from_torch(table, state_dict, config, expected, source)
        return model_layout_params(params, config), warnings
    except core.ConversionError:
        fits = guess_architectures(state_dict)
        if table.name in fits:
            hint = ""
        elif fits:
            hint = (f"its keys fit the conversion table(s) {fits}, not {table.name!r}: "
                    f"wrong --config for this file?")
        else:
            hint = "its keys fit none of the conversion tables (not one of this project's architectures?)"
        return core.from_torch(table, state_dict, config, expected, source, hint=hint)


def export_workdir(config, workdir: str, output: str, fmt: str | None = None,
                   rgb_range: float | None = None, *, step: int | None = None,
                   overwrite: bool = False) -> dict:
    """Latest (or `step`) checkpoint of `workdir` -> `output` (.pth or .safetensors), written
    atomically and never over an existing file unless `overwrite`; returns a summary."""
    from jaxsr import checkpoint, fileio
    from jaxsr.convert import torchio
    if not overwrite:
        fileio.refuse_existing(output)        # before the (slow) work, not after
    weights, meta = checkpoint.load_weights(workdir, step)
    if meta.get("model") not in (None, config.model.name):
        raise core.ConversionError(f"{workdir} holds a {meta.get('model')!r} checkpoint but "
                                   f"config.model.name={config.model.name!r}")
    fmt = fmt or ("safetensors" if str(output).endswith(".safetensors") else "pth")
    if fmt == "safetensors" or checkpoint.EMA_KEY not in weights:
        params, _ = checkpoint.params_to_use(weights, meta, config.eval.get("use_ema", True))
        weights = {"params": params}
    else:
        logging.info("%s has EMA weights: writing BasicSR's {'params', 'params_ema'}", workdir)
    sds = {}
    for key, params in weights.items():
        check_params(params, config, source=f"{key} in {workdir}")
        sds[key] = params_to_state_dict(params, config, rgb_range)
    warnings = core.unofficial(table_for(config), config)
    for w in warnings:
        logging.warning("%s", w)
    sd = sds["params"]
    fmt = torchio.save_state_dict(sds if len(sds) > 1 else sd, output, fmt, overwrite=overwrite)
    return {"keys": len(sd), "params": int(sum(v.size for v in sd.values())),
            "format": fmt, "step": meta.get("step"), "warnings": warnings,
            "entries": sorted(sds) if len(sds) > 1 else None}


CONVERTED_DIR = "converted"


def import_target(workdir: str, source: str, force: bool) -> str:
    """The workdir a conversion writes into: `workdir` when it holds no run, else (with
    `force`) a new DIR/converted/<file stem>[_N] beside the run; never an existing one."""
    from jaxsr import checkpoint, paths
    paths.check_workdir(workdir, write=True)
    existing = checkpoint.existing_run(workdir)
    if not existing:
        return workdir
    stem = os.path.splitext(paths.basename(source))[0] or "model"
    new = paths.join(workdir, CONVERTED_DIR, stem)
    n = 1
    while paths.exists(new):
        n += 1
        new = paths.join(workdir, CONVERTED_DIR, f"{stem}_{n}")
    if not force:
        raise FileExistsError(
            f"{workdir} already holds {', '.join(existing)}; converting into it could replace "
            f"or mix with that run, so nothing was written. Pass a fresh --workdir, or --force "
            f"to write the converted params into the new subfolder {new} (the run is not "
            f"touched).")
    logging.warning("%s holds a run (%s): writing the converted params into %s",
                    workdir, ", ".join(existing), new)
    return new


def import_file(config, path: str, workdir: str, param_key: str | None = None,
                rgb_range: float | None = None, *, force: bool = False) -> dict:
    """`path` (.pth/.pt/.safetensors) -> params-only checkpoint in `workdir` (or, for a
    workdir with a run and `force`, in a new subfolder of it); returns a summary.
    Everything is checked before anything is written; nothing existing is replaced."""
    from jaxsr import checkpoint
    from jaxsr.convert import torchio
    target = import_target(workdir, path, force)
    sds = torchio.load_state_dicts(path, param_key)
    converted, warnings = {}, []
    for key, sd in sds.items():
        source = str(path) if len(sds) == 1 else f"{path}[{key!r}]"
        converted[key], found = state_dict_to_params(sd, config, source=source,
                                                     rgb_range=rgb_range)
        warnings += [w for w in found if w not in warnings]
    for w in warnings:
        logging.warning("%s: %s", path, w)
    sd, params = sds["params"], converted["params"]
    where = checkpoint.save_params(target, params, config,
                                   params_ema=converted.get(checkpoint.EMA_KEY))
    return {"keys": len(sd), "params": int(sum(np.size(v) for v in core.flatten(params).values())),
            "checkpoint": where, "warnings": warnings, "ema": checkpoint.EMA_KEY in converted}
