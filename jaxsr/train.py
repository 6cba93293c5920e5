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

EMA (config.train.ema_decay = d > 0): the state carries 'params_ema', initialised as a
copy of the params and updated after every applied step, ema = d ema + (1 - d) params
(BasicSR's net_g_ema), here in the step wrapper so every objective has it. Validation
(config.train.eval_every > 0, jaxsr.validation) reads the state between steps and never
touches the data stream or the RNG, so it does not change the run.
"""
import collections
import json
import logging
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsr import checkpoint, distributed, faults, objectives, paths, validation, watchdog
from jaxsr.data import pipeline, shard_state
from jaxsr.models import build_model, param_stacks


class NonFiniteLossError(ArithmeticError):
    pass


# ----------------------------------------------------------------------------------------
# Mesh and sharded state.

def make_mesh(devices=None) -> jax.sharding.Mesh:
    """The ('data',) mesh of every process's devices, or of `devices` (e.g. the
    compile-only devices of a TPU topology, jaxsr.aot)."""
    devices = jax.devices() if devices is None else list(devices)
    # Auto axes: XLA infers intermediate shardings and indexing sharded arrays works.
    return jax.make_mesh((len(devices),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def shardings(devices=None):
    """(replicated, split over 'data') shardings on the mesh of every process's devices
    (or of `devices`)."""
    mesh = make_mesh(devices)
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def resolve_batch(config, n: int | None = None) -> int:
    """The global batch per optimizer step. With config.train.per_device_batch_size = p > 0
    it is p x devices x grad_accum_steps and is written into config.train.batch_size (what
    the data pipeline, the lr scaling and the saved config read); else batch_size."""
    n = jax.device_count() if n is None else n
    tc = config.train
    per_device = int(tc.get("per_device_batch_size", 0) or 0)
    if per_device < 0:
        raise ValueError(f"config.train.per_device_batch_size={per_device}: must be >= 0 "
                         "(0: use config.train.batch_size)")
    if per_device:
        tc.batch_size = per_device * n * objectives.grad_accum_steps(tc)
        logging.info("global batch %d = per_device_batch_size %d x %d devices x "
                     "grad_accum_steps %d", tc.batch_size, per_device, n,
                     objectives.grad_accum_steps(tc))
    return tc.batch_size


def batch_split_error(batch: int, n: int, k: int) -> ValueError:
    """What to change when `batch` cannot be split into k micro-batches over n devices."""
    good_k = [d for d in range(1, batch + 1) if batch % d == 0 and (batch // d) % n == 0]
    fixes = [f"config.train.grad_accum_steps={' or '.join(map(str, good_k[:3]))} "
             f"(keeps the batch of {batch})"] if good_k else [
        f"a batch of {batch} cannot give every one of {n} devices a sample: run on fewer "
        "devices (e.g. JAX_PLATFORMS / CUDA_VISIBLE_DEVICES) or raise the batch"]
    per_device = max(1, batch // (n * k))
    fixes.append(f"config.train.per_device_batch_size={per_device} (global batch "
                 f"{per_device * n * k}; set config.train.lr_scaling to adapt the lr)")
    fixes.append(f"config.train.batch_size={-(-batch // (n * k)) * n * k}")
    return ValueError(
        f"config.train.batch_size={batch} cannot be split into grad_accum_steps={k} "
        f"micro-batches over {n} devices: it must be a multiple of {n} x {k} = {n * k}. "
        "Use one of: " + "; ".join(fixes))


def check_batch(config, n: int | None = None) -> None:
    """Resolves the global batch (`resolve_batch`) and checks that it splits into
    grad_accum_steps micro-batches over `n` devices (default: all of them)."""
    n = jax.device_count() if n is None else n
    batch, k = resolve_batch(config, n), objectives.grad_accum_steps(config.train)
    if batch % (n * k):
        raise batch_split_error(batch, n, k)
    if config.train.patch_size % config.scale:
        raise ValueError(f"config.train.patch_size={config.train.patch_size} (HR side) must be a "
                         f"multiple of config.scale={config.scale}")


def dummy_batch(config) -> np.ndarray:
    p = config.train.patch_size
    return np.zeros((config.train.batch_size, p, p, 3), np.uint8)


def ema_decay(config) -> float:
    decay = float(config.train.get("ema_decay", 0.0) or 0.0)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"config.train.ema_decay={decay}: must lie in [0, 1) (0: no EMA; "
                         "BasicSR uses 0.999)")
    return decay


def with_ema(state, config):
    """The state plus 'params_ema' = a copy of the params when config.train.ema_decay > 0."""
    if not ema_decay(config):
        return state
    return dict(state, **{checkpoint.EMA_KEY: jax.tree.map(jnp.copy, state["params"])})


def init_state(objective, config, repl):
    rng = jax.random.PRNGKey(config.seed)
    init = lambda r, hr: with_ema(objective.init_state(r, hr), config)
    return jax.jit(init, out_shardings=repl)(rng, dummy_batch(config))


def abstract_like(state, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        state)


def replace_params(state, params, repl, params_ema=None):
    """The state with new params; its EMA (when kept) restarts from `params_ema`, else
    from the params."""
    state = dict(state, params=jax.device_put(params, repl))
    if checkpoint.EMA_KEY in state:
        ema = params if params_ema is None else params_ema
        state[checkpoint.EMA_KEY] = jax.device_put(jax.tree.map(np.copy, ema), repl)
    return state


# ----------------------------------------------------------------------------------------
# Start: resume from the workdir, or a params-only checkpoint, or init_from, or scratch.

def restore_or_init(mngr, objective, config, repl, data_iter):
    state = init_state(objective, config, repl)
    step = mngr.latest_step()
    if step is not None:
        meta = checkpoint.read_meta(mngr, step)
        checkpoint.check_meta(meta, config, str(mngr.directory))
        if meta.get("kind") == "train":
            return resume(mngr, step, meta, state, config, repl, data_iter)
        return start_from_params(state, mngr.directory, config, repl, strict=True)
    if config.init_from:
        return start_from_params(state, config.init_from, config, repl, strict=False)
    return state


def resume(mngr, step, meta, state, config, repl, data_iter):
    logging.info("resuming from step %d in %s", step, mngr.directory)
    try:
        return checkpoint.restore(mngr, step, abstract_like(state, repl), data_iter=data_iter,
                                  stacks=param_stacks(config))
    except checkpoint.CheckpointMismatchError as e:
        if (checkpoint.EMA_KEY in state) == ("ema_decay" in meta):
            raise
        raise checkpoint.CheckpointMismatchError(
            f"{e}\nThe checkpoint was written {'with' if 'ema_decay' in meta else 'without'} "
            f"EMA weights and config.train.ema_decay={config.train.ema_decay}: EMA cannot be "
            "switched on or off in a resumed run (start a new --workdir with "
            "config.init_from=this one)") from None


def start_from_params(state, source, config, repl, strict: bool):
    weights, meta = checkpoint.load_weights(str(source))
    init = jax.device_get(state["params"])
    stacks = param_stacks(config)   # a checkpoint of the other layout is converted
    params, report = checkpoint.merge_params(init, weights["params"], stacks)
    checkpoint.log_merge_report(report, str(source))
    fresh = ["/".join(re.findall(r"\['([^']*)'\]", k.split(":")[0]))
             for k in report["skipped_shape"] + report["missing"]]
    if fresh and not strict:
        # e.g. x3/x4 from an x2 model: the upsampler convs that differ start afresh, as the
        # official load_state_dict skips the 'tail' tensors whose shapes differ.
        logging.info("init_from %s: re-initialised %d tensors (config.model.init=%r): %s",
                     source, len(fresh), config.model.get("init", "flax"), ", ".join(fresh))
    if strict and (report["missing"] or report["skipped_shape"] or report["unexpected"]):
        raise checkpoint.CheckpointMismatchError(
            f"params checkpoint {source} does not fit the model: {json.dumps(report)[:2000]}")
    logging.info("starting from the params of %s (model %s, step %s) with a fresh optimizer",
                 source, meta.get("model"), meta.get("step"))
    ema = None
    if checkpoint.EMA_KEY in state and checkpoint.EMA_KEY in weights:
        # As BasicSR: the EMA restarts from the source's EMA weights when it has them.
        ema, _ = checkpoint.merge_params(params, weights[checkpoint.EMA_KEY], stacks)
        logging.info("the EMA starts from the EMA weights of %s", source)
    return replace_params(state, params, repl, ema)


# ----------------------------------------------------------------------------------------
# Logging.

def summary_writer(logdir: str):
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when
    it can (only to accept torch tensors), which costs every training start ~4 s."""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None             # makes `import torch` raise ImportError
        try:
            import tensorboardX  # noqa: F401 (imported here, torch-free)
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter
    return SummaryWriter(logdir)


class MetricWriter:
    """JSONL + TensorBoard (tensorboardX) in the workdir. A gs:// workdir: both are written
    to a local folder and uploaded whole at every flush (paths.Mirror)."""

    def __init__(self, workdir: str):
        self.mirror = paths.Mirror(workdir if jax.process_index() == 0 else "")
        self.path = self.mirror.path("metrics.jsonl")
        self.tb = None
        if jax.process_index() == 0:
            self.mirror.fetch("metrics.jsonl")
            self.tb = summary_writer(self.mirror.path("tb"))

    def write(self, step: int, metrics: dict) -> None:
        """One metrics.jsonl line; TensorBoard tags 'train/<k>', or <k> when it has a '/'
        (e.g. 'val/Set5/psnr_y')."""
        if jax.process_index() != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
        self.tb.flush()
        self.mirror.sync()

    def write_images(self, step: int, images: dict) -> None:
        """{tag: HxWx3 uint8} as TensorBoard images."""
        if jax.process_index() != 0:
            return
        for tag, img in images.items():
            self.tb.add_image(tag, img, step, dataformats="HWC")
        self.tb.flush()
        self.mirror.sync()

    def close(self):
        if self.tb is not None:
            self.tb.close()
            self.mirror.close()


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

    decay = ema_decay(config)

    def step_fn(state, hr, nonfinite_step):
        rng = jax.random.fold_in(base_rng, state["step"])
        inner = {k: v for k, v in state.items() if k != checkpoint.EMA_KEY}
        # Mosaic kernels (attention_impl='pallas') are not auto-partitioned: they shard_map
        # themselves over the mesh they are traced under (jaxsr/attention/kernels/entry.py).
        with jax.sharding.use_abstract_mesh(data_sharding.mesh.abstract_mesh):
            new, metrics = objective.train_step(inner, hr, rng)
        if decay:
            new[checkpoint.EMA_KEY] = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                                                   state[checkpoint.EMA_KEY], new["params"])
        ok = metrics["finite"] & (nonfinite_step == 0)
        new = objectives.keep_if(ok, new, state)
        first_bad = (nonfinite_step == 0) & ~metrics["finite"]
        return new, metrics, jnp.where(first_bad, state["step"] + 1, nonfinite_step)

    return jax.jit(step_fn, in_shardings=(repl, data_sharding, repl),
                   out_shardings=(repl, repl, repl), donate_argnums=0)


def step_setup(config):
    """(objective, initial state, jitted step, replicated sharding, data sharding): what the
    loop runs, for scripts and tests that drive the steps by hand."""
    check_batch(config)
    repl, data_sharding = shardings()
    objective = objectives.make(config, build_model(config))
    state = init_state(objective, config, repl)
    return (objective, state, make_step_fn(objective, config, repl, data_sharding), repl,
            data_sharding)


def device_batches(data_iter, data_sharding, depth: int = 2):
    """(global batch dict on the devices: 'hr', plus 'lr' for paired data; iterator state
    after it), `depth` batches ahead of the step that uses them, so the host-to-device copy
    overlaps the current step."""
    queue = collections.deque()
    while True:
        while len(queue) < depth:
            local = next(data_iter)
            queue.append((jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(data_sharding, x), local),
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
    workdir = paths.absolute(workdir)
    paths.check_workdir(workdir, write=True)
    check_batch(config)
    repl, data_sharding = shardings()
    model = build_model(config)
    objective = objectives.make(config, model)
    data_iter = iter(pipeline.train_dataset(config, jax.process_index(), jax.process_count()))
    tc = config.train
    mngr = checkpoint.manager(workdir, keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    writer = None
    try:
        with faults.guard():        # a lost peer: stop with its message (jaxsr.faults)
            state = restore_or_init(mngr, objective, config, repl, shard_state.ShardStateRestore(
                data_iter, shard_state.Layout.of(config, jax.process_index(), jax.process_count())))
            if distributed.is_primary():
                checkpoint.save_config(workdir, config)
            writer = MetricWriter(workdir)
            validator = validation.Validator(config, workdir, model, writer) \
                if validation.enabled(config) else None
            return _loop(state, objective, config, mngr, data_iter, writer, repl,
                         data_sharding, validator)
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


def _loop(state, objective, config, mngr, data_iter, writer, repl, data_sharding,
          validator=None) -> dict:
    tc = config.train
    step_fn = make_step_fn(objective, config, repl, data_sharding)
    step = int(jax.device_get(state["step"]))
    last = {}
    if step >= tc.num_steps:
        logging.info("already at step %d >= num_steps %d: nothing to train", step, tc.num_steps)
        return last
    batches = device_batches(data_iter, data_sharding)
    layout = shard_state.Layout.of(config, jax.process_index(), jax.process_count())
    nonfinite_step = jax.device_put(np.zeros((), np.int32), repl)
    bar = progress_bar(step, tc.num_steps)
    t0, steps_since = time.perf_counter(), 0
    # A stall (input deadlock, hung collective) ends the run with a message.
    steps_watch = watchdog.StepWatchdog.from_config(tc, str(mngr.directory.parent))
    with distributed.Preemption() as preemption, steps_watch:
        while step < tc.num_steps:
            hr, data_state = next(batches)
            state, metrics, nonfinite_step = step_fn(state, hr, nonfinite_step)
            step += 1
            steps_since += 1
            bar.update(1)
            stop = preemption.reached(step)
            log = step % tc.log_every == 0 or step == tc.num_steps
            save = step % tc.checkpoint_every == 0 or step == tc.num_steps or stop
            validate = validator is not None and not stop and validator.due(step)
            steps_watch.step_done(step, waits=log or save or validate, slow=save or validate)
            if log or save or validate:
                check_finite(nonfinite_step, mngr)      # the one host sync
            if log:
                last = _log(step, metrics, steps_since / (time.perf_counter() - t0), writer, bar)
            if validate:
                validator.run(step, state)
            if log or validate:
                t0, steps_since = time.perf_counter(), 0     # steps/s without validation
            if save:
                # The iterator runs ahead (device queue): the state after this step's batch,
                # frozen (a JSON copy) so that an asynchronous save cannot see a later one.
                checkpoint.save(mngr, step, state, config, data_iter=shard_state.ShardStateSave(
                    json.loads(json.dumps(data_state)), layout))
            if stop:
                logging.warning("stopped at step %d after SIGTERM; rerun to resume", step)
                break
    bar.close()
    return last
