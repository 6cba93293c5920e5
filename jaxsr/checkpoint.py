"""Orbax checkpoints: train-state save/restore, params-only checkpoints, init_from.

Layout of a workdir:
  DIR/config.json               the config the run was started with (train mode)
  DIR/checkpoints/<step>/state  the objective's whole state (a dict whose 'params' entry is
                                always the SR model's parameters)
  DIR/checkpoints/<step>/meta   JSON: step, kind ('train' | 'params'), model name, scale
  DIR/checkpoints/<step>/data   the Grain iterator state (train checkpoints only)

A 'params' checkpoint (from `save_params`, e.g. written by `jaxsr.convert from-torch`) holds
only {'params': ...}; evaluation reads it like any other, and train mode starts a fresh
optimizer from it (fine-tuning). `save_params` only ever adds: it keeps every checkpoint
already there and never replaces a config.json that says something else.

A checkpoint that cannot be read (truncated, partly copied) raises DamagedCheckpointError
naming it, the earlier steps and how to fall back to one (`--step`).
"""
import json
import logging
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxsr import config_util, fileio

CHECKPOINT_DIR = "checkpoints"


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
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


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
    if not os.path.isdir(checkpoint_dir(workdir)):
        return None
    with manager(workdir, read_only=True) as mngr:
        return mngr.latest_step()


def make_meta(config, step: int, kind: str) -> dict:
    return {"step": int(step), "kind": kind, "model": config.model.name,
            "scale": int(config.scale)}


def save(mngr, step: int, state, config, *, data_iter=None, kind: str = "train") -> None:
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(make_meta(config, step, kind))}
    if data_iter is not None:
        import grain
        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    try:
        mngr.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:      # noqa: BLE001 - Orbax/TensorStore raise many types
        raise write_error(mngr, step, e) from e


def write_error(mngr, step: int, error: BaseException) -> CheckpointWriteError:
    """Orbax writes a step under a temporary name and renames it when complete, so a
    failed save leaves no step behind and the earlier ones as they were."""
    earlier = [s for s in mngr.all_steps() if s < step]
    kept = f"the latest checkpoint is still step {max(earlier)}" if earlier else \
        "there is no earlier checkpoint"
    return CheckpointWriteError(
        f"could not write checkpoint step {step} in {mngr.directory} "
        f"[{fileio.describe_error(error)}]: nothing of it counts as a checkpoint and {kept}. "
        "Free disk space (or fix the error above) and rerun to resume.")


def damaged_error(mngr, step: int, error: BaseException) -> DamagedCheckpointError:
    """The message for an unreadable step: what, why, and the earlier steps to fall back to."""
    folder = os.path.join(str(mngr.directory), str(step))
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


def restore(mngr, step: int, abstract_state, *, data_iter=None):
    """Restores the state into the structure/shardings of `abstract_state` (and the iterator)."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        import grain
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
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
    path = os.path.abspath(path)
    base = os.path.basename(path)
    if base.isdigit() and os.path.basename(os.path.dirname(path)) == CHECKPOINT_DIR:
        return os.path.dirname(os.path.dirname(path)), int(base)
    if base == CHECKPOINT_DIR:
        return os.path.dirname(path), None
    return path, None


def _local_target(mngr, step: int):
    """The saved state's structure placed on this process's first device: a checkpoint
    written on several devices or hosts reads back in one process (a restore without a
    target refuses the other topology)."""
    from etils import epath
    tree = ocp.StandardCheckpointHandler().metadata(
        epath.Path(str(mngr.directory)) / str(step) / "state")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        dict(tree))


def load_params(path: str, step: int | None = None):
    """(params as numpy arrays, meta) of the latest (or given) checkpoint under `path`."""
    workdir, given = _resolve(path)
    step = given if step is None else step
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise FileNotFoundError(f"no checkpoints in {workdir} (expected {checkpoint_dir(workdir)})")
    with manager(workdir, read_only=True) as mngr:
        step = _pick_step(mngr, step)
        meta = read_meta(mngr, step)
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_local_target(mngr, step))))
            params = jax.tree.map(np.asarray, restored.state["params"])
        except Exception as e:  # noqa: BLE001 - no target structure: any failure is damage
            raise damaged_error(mngr, step, e) from e
    logging.info("loaded params of step %d from %s", step, workdir)
    return params, meta


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
    if os.path.isfile(os.path.join(workdir, "config.json")):
        found.append("config.json")
    ckpt = checkpoint_dir(workdir)
    if os.path.isdir(ckpt) and os.listdir(ckpt):
        found.append(f"checkpoints/ ({', '.join(sorted(os.listdir(ckpt), key=_step_key))})")
    return found


def _step_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def save_params(workdir: str, params, config, step: int = 0) -> str:
    """Writes a params-only checkpoint (kind 'params') and DIR/config.json; returns its folder.

    Only adds: a step that exists, or a config.json that differs from `config`, is refused
    before anything is written, and no other checkpoint is ever removed."""
    config_path = os.path.join(workdir, "config.json")
    new_config = config_json(config)
    if os.path.isfile(config_path):
        with open(config_path) as f:
            if f.read() != new_config:
                raise FileExistsError(f"{config_path} exists and describes another config; "
                                      "not replacing it (use a fresh --workdir)")
    with manager(workdir, keep=None) as mngr:
        if step in mngr.all_steps():
            raise FileExistsError(f"{checkpoint_dir(workdir)}/{step} exists; not overwriting it")
        save(mngr, step, {"params": params}, config, kind="params")
        mngr.wait_until_finished()
    if not os.path.isfile(config_path):
        fileio.write_text(config_path, new_config)
    return os.path.join(checkpoint_dir(workdir), str(step))


# ---------------------------------------------------------------------------------------
# Config stored beside the checkpoints.

def config_json(config) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def save_config(workdir: str, config) -> None:
    """DIR/config.json, replaced atomically (train mode records the config of each run)."""
    fileio.write_text(os.path.join(workdir, "config.json"), config_json(config), overwrite=True)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The ConfigDict saved by train mode (lists come back as tuples, as configs define them)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass --config, or a workdir made by "
                                "`python -m jaxsr.main --mode train` or `jaxsr.convert from-torch`")
    with open(path) as f:
        return config_util.config_from_json(f.read())


# ---------------------------------------------------------------------------------------
# init_from: partial initialisation (e.g. x3/x4 from x2), logged like big_vision's merge.

def merge_params(init_params, loaded_params):
    """Takes every loaded leaf whose path and shape match; returns (params, report dict)."""
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
