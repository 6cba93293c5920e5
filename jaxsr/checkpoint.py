"""Orbax checkpoints: train-state save/restore, params-only checkpoints, init_from.

Layout of a workdir:
  DIR/config.json               the config the run was started with (train mode)
  DIR/checkpoints/<step>/state  the objective's whole state (a dict whose 'params' entry is
                                always the SR model's parameters)
  DIR/checkpoints/<step>/meta   JSON: step, kind ('train' | 'params'), model name, scale
  DIR/checkpoints/<step>/data   the Grain iterator state (train checkpoints only)

A 'params' checkpoint (from `save_params`, e.g. written by `jaxsr.convert from-torch`) holds
only {'params': ...}; evaluation reads it like any other, and train mode starts a fresh
optimizer from it (fine-tuning).
"""
import logging
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxsr import config_util

CHECKPOINT_DIR = "checkpoints"


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to the configured model."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def manager(workdir: str, *, keep: int = 3, async_save: bool = False,
            read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager over DIR/checkpoints (absolute path: Orbax rejects relative ones)."""
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
    mngr.save(step, args=ocp.args.Composite(**items), force=True)


def read_meta(mngr, step: int) -> dict:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def check_meta(meta: dict, config, where: str) -> None:
    """Refuses a checkpoint of another model or scale, naming both."""
    problems = []
    if meta.get("model") != config.model.name:
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
    except ValueError as e:
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {mngr.directory} has a different structure or "
            f"shapes than the configured model: {e}") from None


def _resolve(path: str) -> tuple[str, int | None]:
    """A workdir, a DIR/checkpoints folder or a DIR/checkpoints/<step> folder -> (workdir, step)."""
    path = os.path.abspath(path)
    base = os.path.basename(path)
    if base.isdigit() and os.path.basename(os.path.dirname(path)) == CHECKPOINT_DIR:
        return os.path.dirname(os.path.dirname(path)), int(base)
    if base == CHECKPOINT_DIR:
        return os.path.dirname(path), None
    return path, None


def load_params(path: str, step: int | None = None):
    """(params as numpy arrays, meta) of the latest (or given) checkpoint under `path`."""
    workdir, given = _resolve(path)
    step = given if step is None else step
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise FileNotFoundError(f"no checkpoints in {workdir} (expected {checkpoint_dir(workdir)})")
    with manager(workdir, read_only=True) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {checkpoint_dir(workdir)}")
        meta = read_meta(mngr, step)
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    params = jax.tree.map(np.asarray, restored.state["params"])
    logging.info("loaded params of step %d from %s", step, workdir)
    return params, meta


def save_params(workdir: str, params, config, step: int = 0) -> str:
    """Writes a params-only checkpoint (kind 'params') and DIR/config.json; returns its folder."""
    save_config(workdir, config)
    with manager(workdir) as mngr:
        if step in mngr.all_steps():
            raise FileExistsError(f"{checkpoint_dir(workdir)}/{step} exists; not overwriting it")
        save(mngr, step, {"params": params}, config, kind="params")
        mngr.wait_until_finished()
    return os.path.join(checkpoint_dir(workdir), str(step))


# ---------------------------------------------------------------------------------------
# Config stored beside the checkpoints.

def save_config(workdir: str, config) -> None:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)


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
