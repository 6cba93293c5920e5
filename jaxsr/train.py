"""Training loop: sharded `jax.jit` over a ('data',) mesh, Orbax checkpoints, resume.

Parameters and optimizer state are replicated; the batch is split over the 'data' axis of
the mesh of every process's devices and XLA inserts the gradient all-reduce, so the same
code runs on 1 CPU, 8 GPUs or a multi-host TPU pod slice (jaxsr.distributed). Each process
feeds its own data shards. The step number is folded into the RNG inside the step and the
state is donated.

The host never waits for a step: batches are put on the devices two steps ahead, and the
finiteness flag is read only at log and checkpoint steps. A step whose loss or gradients
are not finite leaves the state untouched and turns every later step into a no-op, so when
the flag is read the run stops with the state before that step; no checkpoint is written
after it (the last one stays the latest).
"""
import collections
import json
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsr import checkpoint, distributed, objectives
from jaxsr.data import pipeline
from jaxsr.models import build_model


class NonFiniteLossError(ArithmeticError):
    pass


# ----------------------------------------------------------------------------------------
# Mesh and sharded state.

def make_mesh() -> jax.sharding.Mesh:
    # Auto axes: XLA infers intermediate shardings and indexing sharded arrays works.
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def check_batch(config) -> None:
    n = jax.device_count()
    if config.train.batch_size % n:
        raise ValueError(f"config.train.batch_size={config.train.batch_size} must be a multiple "
                         f"of the {n} devices (data-parallel split)")
    if config.train.patch_size % config.scale:
        raise ValueError(f"config.train.patch_size={config.train.patch_size} (HR side) must be a "
                         f"multiple of config.scale={config.scale}")


def dummy_batch(config) -> np.ndarray:
    p = config.train.patch_size
    return np.zeros((config.train.batch_size, p, p, 3), np.uint8)


def init_state(objective, config, repl):
    rng = jax.random.PRNGKey(config.seed)
    return jax.jit(objective.init_state, out_shardings=repl)(rng, dummy_batch(config))


def abstract_like(state, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        state)


def replace_params(state, params, repl):
    return dict(state, params=jax.device_put(params, repl))


# ----------------------------------------------------------------------------------------
# Start: resume from the workdir, or a params-only checkpoint, or init_from, or scratch.

def restore_or_init(mngr, objective, config, repl, data_iter):
    state = init_state(objective, config, repl)
    step = mngr.latest_step()
    if step is not None:
        meta = checkpoint.read_meta(mngr, step)
        checkpoint.check_meta(meta, config, str(mngr.directory))
        if meta.get("kind") == "train":
            logging.info("resuming from step %d in %s", step, mngr.directory)
            return checkpoint.restore(mngr, step, abstract_like(state, repl), data_iter=data_iter)
        return start_from_params(state, mngr.directory, config, repl, strict=True)
    if config.init_from:
        return start_from_params(state, config.init_from, config, repl, strict=False)
    return state


def start_from_params(state, source, config, repl, strict: bool):
    loaded, meta = checkpoint.load_params(str(source))
    params, report = checkpoint.merge_params(jax.device_get(state["params"]), loaded)
    checkpoint.log_merge_report(report, str(source))
    if strict and (report["missing"] or report["skipped_shape"] or report["unexpected"]):
        raise checkpoint.CheckpointMismatchError(
            f"params checkpoint {source} does not fit the model: {json.dumps(report)[:2000]}")
    logging.info("starting from the params of %s (model %s, step %s) with a fresh optimizer",
                 source, meta.get("model"), meta.get("step"))
    return replace_params(state, params, repl)


# ----------------------------------------------------------------------------------------
# Logging.

class MetricWriter:
    """JSONL + TensorBoard (tensorboardX) in the workdir."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: dict) -> None:
        if jax.process_index() != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(f"train/{k}", v, step)
        self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def progress_bar(start: int, total: int):
    from tqdm import tqdm
    return tqdm(initial=start, total=total,
                disable=not (sys.stderr.isatty() and distributed.is_primary()),
                dynamic_ncols=True, unit="step")


# ----------------------------------------------------------------------------------------
# The loop.

def make_step_fn(objective, config, repl, data_sharding):
    """(state, hr, nonfinite_step) -> (state, metrics, nonfinite_step), jitted.

    `nonfinite_step` (int32, 0 = none) is the first step whose loss or gradients were not
    finite; from then on every step returns its input state unchanged.
    """
    base_rng = jax.random.PRNGKey(config.seed + 1)

    def step_fn(state, hr, nonfinite_step):
        rng = jax.random.fold_in(base_rng, state["step"])
        new, metrics = objective.train_step(state, hr, rng)
        ok = metrics["finite"] & (nonfinite_step == 0)
        new = objectives.keep_if(ok, new, state)
        first_bad = (nonfinite_step == 0) & ~metrics["finite"]
        return new, metrics, jnp.where(first_bad, state["step"] + 1, nonfinite_step)

    return jax.jit(step_fn, in_shardings=(repl, data_sharding, repl),
                   out_shardings=(repl, repl, repl), donate_argnums=0)


class _IteratorSnapshot:
    """A data-iterator state as grain's checkpoint handler reads it (get_state -> bytes).

    The iterator itself runs ahead, filling the device queue; a checkpoint stores the state
    right after the last batch its step consumed, frozen here so an asynchronous save
    cannot see a later one.
    """

    def __init__(self, state):
        self._json = json.dumps(state).encode()

    def get_state(self) -> bytes:
        return self._json


def device_batches(data_iter, data_sharding, depth: int = 2):
    """(global HR batch on the devices, iterator state after it), `depth` batches ahead of
    the step that uses them, so the host-to-device copy overlaps the current step."""
    queue = collections.deque()
    while True:
        while len(queue) < depth:
            local = next(data_iter)["hr"]
            queue.append((jax.make_array_from_process_local_data(data_sharding, local),
                          data_iter.get_state()))
        yield queue.popleft()


def check_finite(nonfinite_step, mngr) -> None:
    bad = int(jax.device_get(nonfinite_step))
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss or gradients at step {bad}; training stopped, the state was not "
            f"updated from step {bad - 1} and the latest checkpoint (step {mngr.latest_step()}) "
            f"in {mngr.directory} is kept. Lower config.train.lr (or set "
            "config.train.grad_clip_norm) or check the data.")


def train(config, workdir: str) -> dict:
    """Trains until config.train.num_steps; resumes from `workdir` when it has a checkpoint.

    Every process of a multi-process run calls this with the same config and workdir.
    Returns the last logged metrics.
    """
    workdir = os.path.abspath(workdir)
    check_batch(config)
    mesh = make_mesh()
    repl = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P("data"))
    model = build_model(config)
    objective = objectives.make(config, model)
    data_iter = iter(pipeline.train_dataset(config, jax.process_index(), jax.process_count()))
    tc = config.train
    mngr = checkpoint.manager(workdir, keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    writer = None
    try:
        state = restore_or_init(mngr, objective, config, repl, data_iter)
        if distributed.is_primary():
            checkpoint.save_config(workdir, config)
        writer = MetricWriter(workdir)
        return _loop(state, objective, config, mngr, data_iter, writer, repl, data_sharding)
    finally:
        mngr.wait_until_finished()
        mngr.close()
        if writer is not None:
            writer.close()
        if hasattr(data_iter, "close"):
            data_iter.close()


def _log(step, metrics, steps_per_s, writer, bar) -> dict:
    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
    last["steps_per_s"] = steps_per_s
    writer.write(step, last)
    bar.set_postfix(loss=f"{last['loss']:.4f}", sps=f"{steps_per_s:.2f}")
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in last.items()))
    return last


def _loop(state, objective, config, mngr, data_iter, writer, repl, data_sharding) -> dict:
    tc = config.train
    step_fn = make_step_fn(objective, config, repl, data_sharding)
    step = int(jax.device_get(state["step"]))
    last = {}
    if step >= tc.num_steps:
        logging.info("already at step %d >= num_steps %d: nothing to train", step, tc.num_steps)
        return last
    batches = device_batches(data_iter, data_sharding)
    nonfinite_step = jax.device_put(np.zeros((), np.int32), repl)
    bar = progress_bar(step, tc.num_steps)
    t0, steps_since = time.perf_counter(), 0
    with distributed.Preemption() as preemption:
        while step < tc.num_steps:
            hr, data_state = next(batches)
            state, metrics, nonfinite_step = step_fn(state, hr, nonfinite_step)
            step += 1
            steps_since += 1
            bar.update(1)
            stop = preemption.reached(step)
            log = step % tc.log_every == 0 or step == tc.num_steps
            save = step % tc.checkpoint_every == 0 or step == tc.num_steps or stop
            if log or save:
                check_finite(nonfinite_step, mngr)      # the one host sync
            if log:
                last = _log(step, metrics, steps_since / (time.perf_counter() - t0), writer, bar)
                t0, steps_since = time.perf_counter(), 0
            if save:
                checkpoint.save(mngr, step, state, config, data_iter=_IteratorSnapshot(data_state))
            if stop:
                logging.warning("stopped at step %d after SIGTERM; rerun to resume", step)
                break
    bar.close()
    return last
