"""Exports a trained model's evaluation forward as a serialized StableHLO program.

    python -m jaxsr.tools.export --workdir DIR --output model.jaxexport --shape 64x64
    python -m jaxsr.tools.export --workdir DIR --output model.jaxexport --dynamic
        [--batch N] [--separate_weights] [--step N|best] [--overwrite] [--platforms cpu,cuda]
        [--config.model.n_hashes=1 ...]

The model comes from DIR/config.json (+ `--config.a.b=v` overrides) and DIR's latest (or
`--step`, or `--step best`: DIR/best) checkpoint, exactly as `jaxsr.upscale` loads it
(EMA weights when the checkpoint has them, unless --config.eval.use_ema=false); the exported function is the
deterministic evaluation forward `model.apply({'params': p}, lr, train=False)` on float32
NHWC RGB in [0, 1], returning the SR batch (not clamped). Running it needs jax, jaxlib,
numpy and flatbuffers only (no jaxsr, no flax): see docs/training.md, "Export".

* `--shape HxW` fixes the LR size (and `--batch`, default 1); `--dynamic` makes height and
  width symbolic (multiples of the model's input multiple) and the batch too unless
  `--batch` is given. Models whose forward depends on the concrete size (NLSN/DLSN: the
  LSH bucket count follows the map size) are refused with the reason.
* By default the weights are constants inside the program. `--separate_weights` makes
  them the first argument instead and writes them beside the program: `<stem>.npz` (one
  array per parameter, named by its '/'-joined path) and `<stem>.json` (argument order,
  shapes, model facts); call it as `exported.call(dict(np.load('<stem>.npz')), lr)`.

Files are written atomically (temporary file, then rename); an existing file is never
replaced unless `--overwrite` is given.
"""
import argparse
import io
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxsr import checkpoint, fileio, inference, models, upscale

WEIGHTS_SEP = "/"


class ExportError(ValueError):
    """A model, shape or output path that cannot be exported as asked."""


# ---------------------------------------------------------------------------------------
# Input shapes

def parse_shape(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ExportError(f"--shape {text!r}: expected HxW with positive integers, e.g. 64x64")
    return int(parts[0]), int(parts[1])


def _check_fixed_side(side: int, multiple: int, min_size: int, config) -> None:
    if side % multiple or side < min_size:
        good = inference.padded_size(side, multiple, min_size)
        raise ExportError(
            f"--shape: LR side {side} does not fit config.model.name="
            f"{config.model.name!r}, which needs multiples of {multiple} and at least "
            f"{min_size} px (inference pads to that); use {good}")


def input_spec(config, *, shape=None, dynamic: bool = False,
               batch: int | None = None) -> jax.ShapeDtypeStruct:
    """The float32 NHWC argument: fixed `shape` (H, W), or symbolic sides that are
    multiples of `jaxsr.models.input_multiple(config)`."""
    if (shape is None) == (not dynamic):
        raise ExportError("give exactly one of --shape HxW and --dynamic")
    if batch is not None and batch < 1:
        raise ExportError(f"--batch {batch}: must be >= 1")
    multiple, min_size = models.input_multiple(config), models.min_input_size(config)
    if not dynamic:
        for side in shape:
            _check_fixed_side(side, multiple, min_size, config)
        return jax.ShapeDtypeStruct((batch or 1, *shape, 3), jnp.float32)
    side = (lambda d: f"{multiple}*{d}") if multiple > 1 else (lambda d: d)
    least = max(1, math.ceil(min_size / multiple))
    constraints = [f"h >= {least}", f"w >= {least}"] if least > 1 else []
    dims = jax.export.symbolic_shape(f"{batch or 'b'}, {side('h')}, {side('w')}, 3",
                                     constraints=constraints)
    return jax.ShapeDtypeStruct(dims, jnp.float32)


# ---------------------------------------------------------------------------------------
# The exported function

def flat_weights(params) -> dict[str, np.ndarray]:
    """{'body/0/conv1/kernel': array, ...}: names a plain npz file can hold."""
    flat = traverse_util.flatten_dict(params, sep=WEIGHTS_SEP)
    return {k: np.asarray(v) for k, v in sorted(flat.items())}


def _evaluate(model, params, lr):
    # The call of jaxsr.inference.bind: deterministic evaluation (no 'lsh' rng).
    return model.apply({"params": params}, lr, train=False)


def export_model(config, model, params, spec, *, separate_weights: bool = False,
                 platforms=None) -> jax.export.Exported:
    """jax.export of the evaluation forward for the input `spec`; weights baked in as
    constants, or (separate_weights) a first argument {flat name: array}."""
    if separate_weights:
        fn = lambda w, lr: _evaluate(model, traverse_util.unflatten_dict(w, sep=WEIGHTS_SEP), lr)
        weights = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                   for k, v in flat_weights(params).items()}
        head = (weights,)
    else:
        baked = jax.tree.map(jnp.asarray, params)
        fn, head = (lambda lr: _evaluate(model, baked, lr)), ()
    do_export = lambda x: jax.export.export(jax.jit(fn), platforms=platforms)(*head, x)
    try:
        return do_export(spec)
    except Exception as e:  # explained by _refusal; the original error is chained
        if _is_symbolic(spec) and _succeeds(do_export, _fixed_probe(config, spec)):
            raise ExportError(_dynamic_refusal(config, e)) from e
        raise ExportError(_refusal(config, e)) from e


def _is_symbolic(spec) -> bool:
    return any(not isinstance(d, int) for d in spec.shape)


def _fixed_probe(config, spec) -> jax.ShapeDtypeStruct:
    """A valid fixed-size stand-in for a symbolic `spec`."""
    multiple, min_size = models.input_multiple(config), models.min_input_size(config)
    side = inference.padded_size(16, multiple, min_size)
    batch = spec.shape[0] if isinstance(spec.shape[0], int) else 1
    return jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32)


def _succeeds(fn, *args) -> bool:
    try:
        fn(*args)
    except Exception:  # only asked whether it works
        return False
    return True


def _reason(error) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"


def _dynamic_refusal(config, error) -> str:
    return (f"--dynamic: config.model.name={config.model.name!r} exports at a fixed size but "
            f"its forward depends on the concrete image size ({_reason(error)}); e.g. "
            "NLSN/DLSN's LSH attention sets its bucket count from the map size. Export at "
            "a fixed --shape HxW instead")


def _refusal(config, error) -> str:
    name, extras = config.model.name, models.eval_extras(config)
    if extras:
        return (f"config.model.name={name!r} takes per-image inputs {list(extras)} (e.g. "
                f"USRNet's blur kernel) beside the image; export only feeds the image "
                f"({_reason(error)})")
    return f"exporting config.model.name={name!r} failed: {_reason(error)}"


def weights_manifest(config, spec, weights, *, program: str, npz: str, step) -> dict:
    """What a caller without jaxsr needs to know to call the program."""
    return {
        "program": program, "weights_file": npz,
        "call": "exported.call(weights, lr)",
        "arguments": [
            {"name": "weights", "kind": "dict of the npz arrays, keyed by their names"},
            {"name": "lr", "shape": [str(d) for d in spec.shape], "dtype": "float32",
             "layout": "NHWC RGB in [0, 1]"}],
        "output": f"NHWC SR, {int(config.scale)}x the input sides, not clamped",
        "model": config.model.name, "scale": int(config.scale), "step": step,
        "input_multiple": models.input_multiple(config),
        "min_input_size": models.min_input_size(config),
        "weights": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                    for k, v in weights.items()},
    }


# ---------------------------------------------------------------------------------------
# Writing

def sidecar_paths(output: str) -> tuple[str, str]:
    stem = os.path.splitext(output)[0]
    return stem + ".npz", stem + ".json"


def refuse_existing(paths, overwrite: bool) -> None:
    from jaxsr import paths as path_layer
    existing = [p for p in paths if path_layer.exists(p)]
    if existing and not overwrite:
        raise ExportError(f"{', '.join(existing)} exists; not overwriting it (pass --overwrite)")


def write_files(contents: dict[str, bytes], *, overwrite: bool = False) -> None:
    """Each file atomically (jaxsr.fileio); without `overwrite` nothing is written when any
    target exists, and a file that appears meanwhile is never replaced."""
    refuse_existing(contents, overwrite)
    for path, data in contents.items():
        try:
            with fileio.atomic_path(path, overwrite=overwrite) as tmp:
                with open(tmp, "wb") as f:
                    f.write(data)
        except fileio.OverwriteError:
            raise ExportError(f"{path} appeared while exporting; not overwriting it") from None


def export_workdir(workdir: str, output: str, *, shape=None, dynamic: bool = False,
                   batch: int | None = None, separate_weights: bool = False,
                   step: int | None = None, overwrite: bool = False, overrides=(),
                   platforms=None) -> jax.export.Exported:
    """Loads DIR's model like `jaxsr.upscale`, exports it and writes the file(s);
    `shape`: (H, W) or 'HxW'."""
    targets = [output, *(sidecar_paths(output) if separate_weights else ())]
    refuse_existing(targets, overwrite)   # before the (slow) loading and tracing
    shape = parse_shape(shape) if isinstance(shape, str) else shape
    up = upscale.Upscaler.from_workdir(workdir, overrides, step)
    model, params, config = up.apply_fn.model, up.apply_fn.params, up.config
    spec = input_spec(config, shape=shape, dynamic=dynamic, batch=batch)
    exported = export_model(config, model, params, spec,
                            separate_weights=separate_weights, platforms=platforms)
    contents = {output: bytes(exported.serialize())}
    if separate_weights:
        npz, manifest = sidecar_paths(output)
        weights = flat_weights(params)
        buffer = io.BytesIO()
        np.savez(buffer, **weights)
        if step is None and models.has_params(config):
            step = checkpoint.latest_step(workdir)
        elif step == "best":
            step = (checkpoint.read_best(workdir) or {}).get("step")
        info = weights_manifest(config, spec, weights, program=os.path.basename(output),
                                npz=os.path.basename(npz), step=step)
        contents[npz] = buffer.getvalue()
        contents[manifest] = json.dumps(info, indent=2).encode()
    write_files(contents, overwrite=overwrite)
    return exported


# ---------------------------------------------------------------------------------------
# Command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxsr.tools.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="trained workdir, or 'bicubic'")
    p.add_argument("--output", required=True, help="the program file, e.g. model.jaxexport")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--shape", help="fixed LR size HxW, e.g. 64x64")
    size.add_argument("--dynamic", action="store_true", help="symbolic height and width")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default: 1 with --shape, symbolic with --dynamic)")
    p.add_argument("--separate_weights", action="store_true",
                   help="weights as an argument, written to <stem>.npz + <stem>.json")
    p.add_argument("--step", type=checkpoint.parse_step, default=None,
                   help="checkpoint step, or 'best' (DIR/best; default: latest)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--platforms", default="",
                   help="comma-separated, e.g. cpu,cuda (default: this machine's backend)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        overrides, rest = upscale.split_overrides(argv)
        args = _parser().parse_args(rest)
        platforms = [s for s in args.platforms.split(",") if s] or None
        exported = export_workdir(
            args.workdir, args.output, shape=args.shape, dynamic=args.dynamic,
            batch=args.batch, separate_weights=args.separate_weights, step=args.step,
            overwrite=args.overwrite, overrides=overrides, platforms=platforms)
    except (ExportError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    (inp, *_), out = exported.in_avals[-1:], exported.out_avals[0]
    print(f"wrote {args.output}: input {inp.str_short()} -> output {out.str_short()} "
          f"(platforms {', '.join(exported.platforms)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
