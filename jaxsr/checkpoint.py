"""Orbax checkpoints: train-state save/restore, params-only checkpoints, init_from.

Layout of a workdir:
  DIR/config.json               the config the run was started with (train mode)
  DIR/checkpoints/<step>/state  the objective's whole state (a dict whose 'params' entry is
                                always the SR model's parameters)
  DIR/checkpoints/<step>/meta   JSON: step, kind ('train' | 'params'), model name, scale
  DIR/checkpoints/<step>/data   the data stream's state per data shard (train checkpoints
                                only; jaxsr.data.shard_state)

A 'params' checkpoint (from `save_params`, e.g. written by `jaxsr.convert from-torch`) holds
only {'params': ...} (and 'params_ema' when the source had EMA weights); evaluation reads
it like any other, and train mode starts a fresh optimizer from it (fine-tuning).

EMA: a run with config.train.ema_decay > 0 keeps 'params_ema' in its state (BasicSR's
net_g_ema). `load_weights(..., use_ema=True)` is the one place that picks the weights
evaluate / upscale / export / convert use: the EMA ones when the checkpoint has them.

DIR/best (jaxsr.validation) is a params workdir of its own (checkpoints/<step>, config.json,
best.json naming the step and its validation PSNR); `step="best"` reads it. `save_params` only ever adds: it keeps every checkpoint
already there and never replaces a config.json that says something else.

A checkpoint that cannot be read (truncated, partly copied) raises DamagedCheckpointError
naming it, the earlier steps and how to fall back to one (`--step`).

Layouts (config.model.scan_blocks, jaxsr.models.scan): a checkpoint holds the params,
EMA and optimizer state in the layout of the run that wrote it, unrolled (per-layer
subtrees) or scanned (stacked). `restore(..., stacks=)` and `merge_params(..., stacks=)`
convert the other layout on the way in (logged), so older unrolled workdirs resume in a
scanned model and the reverse; models apply params of either layout.
"""
import json
import logging

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxsr import checkpoint_layout, config_util, fileio, paths
from jaxsr.models import scan

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"            # the best validation checkpoint (jaxsr.validation)
BEST_JSON = "best.json"
EMA_KEY = "params_ema"


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to the configured model."""


class DamagedCheckpointError(OSError):
    """A committed checkpoint whose files cannot be read back."""


class CheckpointWriteError(OSError):
    """A save that failed (full disk, I/O error); the earlier checkpoints are untouched."""


# Models whose parameter trees are identical, so a checkpoint of one serves the other:
# KAIR's usrnet.pth converted as 'usrnet' is also the USRNet of 'gt_usrnet' (true kernel).
SAME_PARAMETERS = (frozenset({"usrnet", "gt_usrnet"}),)


def checkpoint_dir(workdir: str) -> str:
    return paths.join(paths.absolute(workdir), CHECKPOINT_DIR)


def manager(workdir: str, *, keep: int | None = 3, async_save: bool = False,
            read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager over DIR/checkpoints (absolute path: Orbax rejects relative ones).

    `keep`: how many checkpoints the manager keeps when it saves (None: all of them)."""
    # read_only only stops creating the folder: Orbax's own read_only mode logs a warning
    # on every evaluation, and readers never save anyway.
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=opts)


def latest_step(workdir: str) -> int | None:
    """Latest committed step in DIR/checkpoints, or None (unfinished saves are ignored)."""
    if not paths.isdir(checkpoint_dir(workdir)):
        return None
    with manager(workdir, read_only=True) as mngr:
        return mngr.latest_step()


def make_meta(config, step: int, kind: str, *, has_ema: bool = False,
              extra: dict | None = None) -> dict:
    meta = {"step": int(step), "kind": kind, "model": config.model.name,
            "scale": int(config.scale)}
    if has_ema:     # None: EMA weights of unknown decay (e.g. converted from PyTorch)
        meta["ema_decay"] = float(config.train.get("ema_decay", 0.0)) or None
    return {**meta, **(extra or {})}


def save(mngr, step: int, state, config, *, data_iter=None, kind: str = "train",
         extra_meta: dict | None = None) -> None:
    meta = make_meta(config, step, kind, has_ema=EMA_KEY in state, extra=extra_meta)
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:       # jaxsr.data.shard_state's per-shard args, or an iterator
        import grain
        items["data"] = data_iter if isinstance(data_iter, ocp.args.CheckpointArgs) \
            else grain.checkpoint.CheckpointSave(data_iter)
    try:
        mngr.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:      # noqa: BLE001 - Orbax/TensorStore raise many types
        raise write_error(mngr, step, e) from e


def write_error(mngr, step: int, error: BaseException) -> CheckpointWriteError:
    """Orbax writes a step under a temporary name and renames it when complete (on gs://:
    marks it complete with commit_success.txt files), so a failed save leaves no step
    behind and the earlier ones as they were."""
    earlier = [s for s in mngr.all_steps() if s < step]
    kept = f"the latest checkpoint is still step {max(earlier)}" if earlier else \
        "there is no earlier checkpoint"
    return CheckpointWriteError(
        f"could not write checkpoint step {step} in {mngr.directory} "
        f"[{fileio.describe_error(error)}]: nothing of it counts as a checkpoint and {kept}. "
        "Free disk space (or fix the error above) and rerun to resume.")


def damaged_error(mngr, step: int, error: BaseException) -> DamagedCheckpointError:
    """The message for an unreadable step: what, why, and the earlier steps to fall back to."""
    folder = paths.join(str(mngr.directory), str(step))
    earlier = sorted(s for s in mngr.all_steps() if s < step)
    if earlier:
        fallback = (f"Earlier checkpoints there: {steps_text(earlier)}. To use the "
                    f"previous one, pass --step={earlier[-1]} (evaluate, upscale, convert), or "
                    f"move {folder} out of {mngr.directory} so that training resumes from "
                    f"step {earlier[-1]}.")
    else:
        fallback = f"There is no earlier checkpoint in {mngr.directory}."
    return DamagedCheckpointError(
        f"checkpoint step {step} ({folder}) cannot be read: it is damaged or incomplete "
        f"(truncated or partly copied?) [{fileio.describe_error(error)}]. {fallback}")


def steps_text(steps, most: int = 6) -> str:
    """'2, 4, 6' or '(40 steps) ..., 36, 38, 40' for long lists."""
    steps = list(steps)
    if len(steps) <= most:
        return ", ".join(map(str, steps))
    return f"({len(steps)} steps) ..., " + ", ".join(map(str, steps[-most:]))


def _is_structure_mismatch(error: BaseException) -> bool:
    # Orbax reports a tree/shape that differs from the requested one as a ValueError;
    # unreadable files surface as JSON errors or TensorStore read errors instead.
    return (isinstance(error, ValueError) and not isinstance(error, json.JSONDecodeError)
            and "error while reading" not in str(error))


def read_meta(mngr, step: int) -> dict:
    try:
        return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:      # noqa: BLE001 - any failure to read is reported as damage
        raise damaged_error(mngr, step, e) from e


def same_parameters(a: str, b: str) -> bool:
    return a == b or any({a, b} <= group for group in SAME_PARAMETERS)


def check_meta(meta: dict, config, where: str) -> None:
    """Refuses a checkpoint of another model or scale, naming both."""
    problems = []
    if not same_parameters(meta.get("model"), config.model.name):
        problems.append(f"model {meta.get('model')!r} != config.model.name {config.model.name!r}")
    if int(meta.get("scale", config.scale)) != int(config.scale):
        problems.append(f"scale {meta.get('scale')} != config.scale {config.scale}")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {where} does not match the config: {'; '.join(problems)}. "
            "Use the config the checkpoint was trained with, another --workdir, or "
            "config.init_from to fine-tune from it.")


def restore(mngr, step: int, abstract_state, *, data_iter=None, stacks=()):
    """Restores the state into the structure/shardings of `abstract_state` (and the iterator).

    `stacks` (the model's `param_stacks()`): a checkpoint written in the other parameter
    layout is read in its own and converted (jaxsr.models.scan)."""
    saved = checkpoint_layout.saved_layout(mngr, step, stacks)
    want = checkpoint_layout.tree_layout(abstract_state, stacks)
    if saved is not None and want is not None and saved != want:
        return checkpoint_layout.restore_converted(
            lambda target: _restore_as(mngr, step, target, data_iter), abstract_state, stacks,
            saved, want, where=f"checkpoint step {step} in {mngr.directory}")
    return _restore_as(mngr, step, abstract_state, data_iter)


def _restore_as(mngr, step: int, abstract_state, data_iter):
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        import grain
        items["data"] = data_iter if isinstance(data_iter, ocp.args.CheckpointArgs) \
            else grain.checkpoint.CheckpointRestore(data_iter)
    try:
        return mngr.restore(step, args=ocp.args.Composite(**items)).state
    except Exception as e:      # noqa: BLE001
        if _is_structure_mismatch(e):
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {mngr.directory} has a different structure or "
                f"shapes than the configured model: {e}") from None
        raise damaged_error(mngr, step, e) from e


def _resolve(path: str) -> tuple[str, int | None]:
    """A workdir, a DIR/checkpoints folder or a DIR/checkpoints/<step> folder -> (workdir, step)."""
    path = paths.absolute(path)
    base = paths.basename(path)
    if base.isdigit() and paths.basename(paths.dirname(path)) == CHECKPOINT_DIR:
        return paths.dirname(paths.dirname(path)), int(base)
    if base == CHECKPOINT_DIR:
        return paths.dirname(path), None
    return path, None


def _local_target(mngr, step: int):
    """The saved state's structure placed on this process's first device: a checkpoint
    written on several devices or hosts reads back in one process (a restore without a
    target refuses the other topology)."""
    tree = checkpoint_layout.saved_tree(mngr.directory, step)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


def best_dir(workdir: str) -> str:
    return paths.join(paths.absolute(workdir), BEST_DIR)


def read_best(workdir: str) -> dict | None:
    """DIR/best/best.json ({'step', 'val_psnr_y', ...}) or None when there is no best yet."""
    path = paths.join(best_dir(workdir), BEST_JSON)
    if not paths.isfile(path):
        return None
    return json.loads(paths.read_text(path))


def parse_step(text) -> int | str | None:
    """A --step value: None/'' (latest), 'best', or a step number; else ValueError."""
    if text is None or text == "":
        return None
    if isinstance(text, int) or str(text) == "best":
        return text
    if not str(text).isdigit():
        raise ValueError(f"--step={text!r}: give a checkpoint step number or 'best'")
    return int(text)


def _best_location(workdir: str) -> tuple[str, int]:
    """(DIR/best, its step): the step best.json names when it is there (a newer best whose
    predecessor is not removed yet), else the latest one there."""
    where = best_dir(workdir)
    if not paths.isdir(checkpoint_dir(where)):
        raise FileNotFoundError(f"no best checkpoint in {where}: it is written by training "
                                "with config.train.eval_every > 0")
    record = read_best(workdir) or {}
    with manager(where, read_only=True) as mngr:
        steps = mngr.all_steps()
        step = record.get("step") if record.get("step") in steps else mngr.latest_step()
    if step is None:
        raise FileNotFoundError(f"no finished best checkpoint in {where}")
    return where, step


def load_weights(path: str, step: int | str | None = None):
    """({'params': ..., ['params_ema': ...]} as numpy arrays, meta) of the latest (or
    given, or 'best') checkpoint under `path`."""
    if step == "best":
        path, step = _best_location(_resolve(path)[0])
    workdir, given = _resolve(path)
    step = given if step is None else step
    if not paths.isdir(checkpoint_dir(workdir)):
        raise FileNotFoundError(f"no checkpoints in {workdir} (expected {checkpoint_dir(workdir)})")
    with manager(workdir, read_only=True) as mngr:
        step = _pick_step(mngr, step)
        meta = read_meta(mngr, step)
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_local_target(mngr, step))))
            weights = {k: jax.tree.map(np.asarray, restored.state[k])
                       for k in ("params", EMA_KEY) if k in restored.state}
        except Exception as e:  # noqa: BLE001 - no target structure: any failure is damage
            raise damaged_error(mngr, step, e) from e
    logging.info("loaded params of step %d from %s", step, workdir)
    return weights, meta


def load_params(path: str, step: int | str | None = None):
    """(the raw params as numpy arrays, meta) of the latest (or given) checkpoint."""
    weights, meta = load_weights(path, step)
    return weights["params"], meta


def params_to_use(weights: dict, meta: dict, use_ema: bool, where: str = ""):
    """(params, used_ema): the EMA weights when present and `use_ema`, else the raw ones;
    logged, so every tool says which it runs."""
    if use_ema and EMA_KEY in weights:
        decay = meta.get("ema_decay")
        logging.info("using EMA weights (decay %s) of step %s%s", decay or "unknown",
                     meta.get("step"), f" in {where}" if where else "")
        return weights[EMA_KEY], True
    if EMA_KEY in weights:
        logging.info("using the raw (non-EMA) weights of step %s (config.eval.use_ema=False)",
                     meta.get("step"))
    return weights["params"], False


def load_eval_params(path: str, step: int | str | None = None, use_ema: bool = True):
    """(params, meta, used_ema) for inference: what evaluate/upscale/export/convert run."""
    weights, meta = load_weights(path, step)
    params, used_ema = params_to_use(weights, meta, use_ema, path)
    return params, meta, used_ema


def _pick_step(mngr, step: int | None) -> int:
    """`step`, checked to exist, or the latest committed one."""
    steps = mngr.all_steps()
    if step is None:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {mngr.directory}")
    elif step not in steps:
        raise FileNotFoundError(f"no checkpoint step {step} in {mngr.directory}; it has "
                                f"{steps_text(sorted(steps)) or 'none'}")
    return step


def existing_run(workdir: str) -> list[str]:
    """What `workdir` already holds that a new params checkpoint could collide with."""
    found = []
    if paths.isfile(paths.join(workdir, "config.json")):
        found.append("config.json")
    ckpt = checkpoint_dir(workdir)
    names = paths.listdir(ckpt) if paths.isdir(ckpt) else []
    if names:
        found.append(f"checkpoints/ ({', '.join(sorted(names, key=_step_key))})")
    return found


def _step_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def save_params(workdir: str, params, config, step: int = 0, params_ema=None) -> str:
    """Writes a params-only checkpoint (kind 'params'; with `params_ema` when given) and
    DIR/config.json; returns its folder.

    Only adds: a step that exists, or a config.json that differs from `config`, is refused
    before anything is written, and no other checkpoint is ever removed."""
    config_path = paths.join(workdir, "config.json")
    new_config = config_json(config)
    if paths.isfile(config_path):
        if paths.read_text(config_path) != new_config:
            raise FileExistsError(f"{config_path} exists and describes another config; "
                                  "not replacing it (use a fresh --workdir)")
    with manager(workdir, keep=None) as mngr:
        if step in mngr.all_steps():
            raise FileExistsError(f"{checkpoint_dir(workdir)}/{step} exists; not overwriting it")
        state = {"params": params} if params_ema is None else \
            {"params": params, EMA_KEY: params_ema}
        save(mngr, step, state, config, kind="params")
        mngr.wait_until_finished()
    if not paths.isfile(config_path):
        fileio.write_text(config_path, new_config)
    return paths.join(checkpoint_dir(workdir), str(step))


# ---------------------------------------------------------------------------------------
# Config stored beside the checkpoints.

def config_json(config) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def save_config(workdir: str, config) -> None:
    """DIR/config.json, replaced atomically (train mode records the config of each run)."""
    fileio.write_text(paths.join(workdir, "config.json"), config_json(config), overwrite=True)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The ConfigDict saved by train mode (lists come back as tuples, as configs define them)."""
    path = paths.join(workdir, "config.json")
    if not paths.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass --config, or a workdir made by "
                                "`python -m jaxsr.main --mode train` or `jaxsr.convert from-torch`")
    return config_util.config_from_json(paths.read_text(path))


# ---------------------------------------------------------------------------------------
# init_from: partial initialisation (e.g. x3/x4 from x2), logged like big_vision's merge.

def merge_params(init_params, loaded_params, stacks=()):
    """Takes every loaded leaf whose path and shape match; returns (params, report dict).

    `stacks` (the model's `param_stacks()`): loaded params of the other layout are
    converted to that of `init_params` first (logged)."""
    want = scan.layout_of(init_params, stacks) if stacks else None
    have = scan.layout_of(loaded_params, stacks) if stacks else None
    if want is not None and have is not None and have != want:
        logging.info("init_from: params in the %s layout, converted to the %s one of this "
                     "run (config.model.scan_blocks)", have, want)
        loaded_params = scan.convert(loaded_params, stacks, want)
    flat_init = {jax.tree_util.keystr(k): v for k, v in
                 jax.tree_util.tree_flatten_with_path(init_params)[0]}
    flat_loaded = {jax.tree_util.keystr(k): v for k, v in
                   jax.tree_util.tree_flatten_with_path(loaded_params)[0]}
    report = {"loaded": [], "skipped_shape": [], "missing": [], "unexpected": []}
    for key, value in flat_init.items():
        if key not in flat_loaded:
            report["missing"].append(key)
        elif np.shape(flat_loaded[key]) != np.shape(value):
            report["skipped_shape"].append(
                f"{key}: checkpoint {np.shape(flat_loaded[key])} vs model {np.shape(value)}")
        else:
            report["loaded"].append(key)
    report["unexpected"] = sorted(set(flat_loaded) - set(flat_init))
    take = set(report["loaded"])

    def pick(path, value):
        key = jax.tree_util.keystr(path)
        return np.asarray(flat_loaded[key], dtype=value.dtype) if key in take else value

    return jax.tree_util.tree_map_with_path(pick, init_params), report


def log_merge_report(report: dict, source: str) -> None:
    logging.info("init_from %s: loaded %d tensors", source, len(report["loaded"]))
    for what in ("skipped_shape", "missing", "unexpected"):
        if report[what]:
            logging.warning("init_from %s: %s (%d): %s", source, what, len(report[what]),
                            ", ".join(report[what]))
