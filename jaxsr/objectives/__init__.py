"""Training objectives: what one optimisation step does.

`config.train.objective` names a module here (`sr`: L1 on synthesised LR; `gan`: NLCUnetGAN;
`kernel`: KENet; `nonblind`: USRNet given the true kernel and noise level). Each has `make(config, model) -> Objective` with

  init_state(rng, hr_batch_uint8) -> state   # dict: 'step', 'params' (SR model), 'opt_state', ...
  train_step(state, hr_batch_uint8, rng) -> (state, metrics)   # pure; jitted by train.py

where a batch is the HR uint8 array or the pipeline's dict ({'hr'}, plus 'lr' for paired
data; `split_batch`).

Shared helpers for the optimizer, the learning-rate schedule and the non-finite guard
live here so that every objective builds them the same way.
"""
import collections
import importlib

import jax
import jax.numpy as jnp
import optax


def make(config, model):
    name = config.train.objective
    try:
        module = importlib.import_module(f"jaxsr.objectives.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"jaxsr.objectives.{name}":
            raise
        raise ValueError(f"config.train.objective={name!r} is unknown "
                         "(one of 'sr', 'gan', 'kernel', 'nonblind')") from None
    return module.make(config, model)


SCHEDULES = ("constant", "step", "cosine", "cosine_restarts")


def _bad(key: str, value, why: str) -> ValueError:
    return ValueError(f"config.train.{key}={value!r}: {why}")


def _shifted(schedule: optax.Schedule, offset: int) -> optax.Schedule:
    """`schedule` read `offset` steps later: join_schedules restarts each piece's count at
    its boundary, and the pieces here keep counting in absolute (BasicSR) steps."""
    return lambda count: schedule(count + offset)


def _step_decay(train_cfg, lr: float) -> optax.Schedule:
    """x lr_gamma from each of lr_milestones on (a repeated milestone applies twice, as
    BasicSR's Counter), or every lr_halve_every steps; constant when neither is set."""
    milestones = tuple(int(m) for m in train_cfg.get("lr_milestones", ()) or ())
    gamma = float(train_cfg.get("lr_gamma", 0.5))
    if any(m <= 0 for m in milestones):
        raise _bad("lr_milestones", milestones, "milestones must be positive steps")
    if milestones:
        counts = collections.Counter(milestones)
        return optax.piecewise_constant_schedule(lr, {m: gamma ** n for m, n in counts.items()})
    every = int(train_cfg.get("lr_halve_every", 0) or 0)
    if every < 0:
        raise _bad("lr_halve_every", every, "must be >= 0 (0: off)")
    if every > 0:
        return optax.exponential_decay(lr, transition_steps=every, decay_rate=gamma,
                                       staircase=True)
    return optax.constant_schedule(lr)


def _cosine_restarts(train_cfg, lr: float, min_lr: float) -> optax.Schedule:
    """BasicSR's CosineAnnealingRestartLR: step s of period i (cumulative ends c_i) gets
    min_lr + w_i (lr - min_lr) (1 + cos(pi (s - c_{i-1}) / p_i)) / 2 for c_{i-1} < s <= c_i
    (period 0: 0 <= s <= c_0); after the last period it stays at min_lr."""
    periods = tuple(int(p) for p in train_cfg.get("cosine_periods", ()) or ())
    if not periods or any(p <= 0 for p in periods):
        raise _bad("cosine_periods", periods, "schedule 'cosine_restarts' needs positive "
                   "period lengths in steps (BasicSR `periods`)")
    weights = tuple(float(w) for w in train_cfg.get("restart_weights", ()) or ())
    weights = weights or (1.0,) * len(periods)
    if len(weights) != len(periods):
        raise _bad("restart_weights", weights, f"needs one weight per period "
                   f"({len(periods)}, config.train.cosine_periods={periods})")
    ends = [sum(periods[:i + 1]) for i in range(len(periods))]
    pieces = []
    for i, (period, weight) in enumerate(zip(periods, weights)):
        peak = min_lr + weight * (lr - min_lr)
        cosine = optax.cosine_decay_schedule(peak, period, alpha=min_lr / peak if peak else 0.0)
        # Period i > 0 starts one step after the previous end (that step is its min_lr).
        pieces.append(cosine if i == 0 else _shifted(cosine, 1))
    return optax.join_schedules(pieces, [e + 1 for e in ends[:-1]])


def _check_lengths(train_cfg, name: str, warmup: int, min_lr: float, lr: float) -> None:
    num_steps = int(train_cfg.get("num_steps", 0))
    if warmup < 0 or (warmup > 0 and warmup >= num_steps):
        raise _bad("warmup_steps", warmup, f"must be >= 0 and shorter than "
                   f"config.train.num_steps={num_steps}")
    if name in ("cosine", "cosine_restarts") and not 0.0 <= min_lr <= lr:
        raise _bad("min_lr", min_lr, f"must lie in [0, lr={lr}] for schedule {name!r}")
    if name == "cosine" and num_steps <= 0:
        raise _bad("num_steps", num_steps, "schedule 'cosine' decays over num_steps > 0")


LR_SCALING = ("none", "linear", "sqrt")


def lr_batch_factor(train_cfg) -> float:
    """The factor `config.train.lr_scaling` applies to lr (and min_lr) for the global batch
    B = train.batch_size against train.lr_reference_batch B0: 1 ('none'), B / B0
    ('linear', Goyal et al. 2017), sqrt(B / B0) ('sqrt', the usual rule for Adam)."""
    rule = train_cfg.get("lr_scaling", "none") or "none"
    if rule not in LR_SCALING:
        raise _bad("lr_scaling", rule, f"unknown rule (one of {', '.join(LR_SCALING)})")
    if rule == "none":
        return 1.0
    ref = int(train_cfg.get("lr_reference_batch", 16) or 0)
    if ref <= 0:
        raise _bad("lr_reference_batch", ref, "must be a positive batch size")
    ratio = int(train_cfg.batch_size) / ref
    return ratio if rule == "linear" else ratio ** 0.5


def lr_schedule(train_cfg, lr: float | None = None) -> optax.Schedule:
    """The lr of the update at (0-based) step s; docs/training.md has the formulas.

    `train_cfg.schedule`: 'constant'; 'step' (x lr_gamma at each lr_milestones, else every
    lr_halve_every steps, else constant); 'cosine' (lr to min_lr over num_steps); or
    'cosine_restarts' (BasicSR CosineAnnealingRestartLR over cosine_periods with
    restart_weights, then min_lr). `warmup_steps` W > 0 ramps linearly from 0 (step 0) to
    lr (step W) in front: 'cosine' then decays over the remaining num_steps - W steps, the
    other schedules keep their absolute step numbers (as BasicSR's warmup_iter).
    Steps are optimizer steps (with gradient accumulation, one per accumulated batch); lr
    and min_lr are multiplied by `lr_batch_factor` (train.lr_scaling).
    """
    factor = lr_batch_factor(train_cfg)
    lr = float(train_cfg.lr if lr is None else lr) * factor
    name = train_cfg.get("schedule", "step") or "step"
    warmup = int(train_cfg.get("warmup_steps", 0) or 0)
    min_lr = float(train_cfg.get("min_lr", 0.0) or 0.0) * factor
    if name not in SCHEDULES:
        raise _bad("schedule", name, f"unknown schedule (one of {', '.join(SCHEDULES)})")
    _check_lengths(train_cfg, name, warmup, min_lr, lr)
    if name == "cosine":
        num_steps = int(train_cfg.num_steps)
        if warmup:
            return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, num_steps, min_lr)
        return optax.cosine_decay_schedule(lr, num_steps, alpha=min_lr / lr if lr else 0.0)
    if name == "cosine_restarts":
        schedule = _cosine_restarts(train_cfg, lr, min_lr)
    elif name == "step":
        schedule = _step_decay(train_cfg, lr)
    else:
        schedule = optax.constant_schedule(lr)
    if not warmup:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                 _shifted(schedule, warmup)], [warmup])


def adam(train_cfg, lr: float | None = None):
    """Adam (AdamW when train_cfg.weight_decay > 0) with the config's betas/eps and lr
    schedule, after clip_by_global_norm(grad_clip_norm) when that is > 0; returns
    (tx, schedule). AdamW's decay is decoupled and scaled by the lr, as torch.optim.AdamW:
    p -= lr(s) * (adam_update + weight_decay * p), on every parameter."""
    schedule = lr_schedule(train_cfg, lr)
    decay = float(train_cfg.get("weight_decay", 0.0) or 0.0)
    clip = float(train_cfg.get("grad_clip_norm", 0.0) or 0.0)
    if decay < 0:
        raise _bad("weight_decay", decay, "must be >= 0 (0: plain Adam)")
    if clip < 0:
        raise _bad("grad_clip_norm", clip, "must be >= 0 (0: no clipping)")
    betas = dict(b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps)
    if decay > 0:
        tx = optax.adamw(schedule, weight_decay=decay, **betas)
    else:
        tx = optax.adam(schedule, **betas)
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, schedule


def grad_accum_steps(train_cfg) -> int:
    """config.train.grad_accum_steps (>= 1): micro-batches per optimizer step."""
    k = int(train_cfg.get("grad_accum_steps", 1) or 1)
    if k < 1:
        raise _bad("grad_accum_steps", k, "must be >= 1 (1: no accumulation)")
    return k


def split_micro(x, steps: int):
    """[B, ...] -> [steps, B / steps, ...], micro-batch i = rows i, i + steps, i + 2 steps...

    Interleaved rather than contiguous: the batch arrives split over the devices in
    contiguous blocks, so every micro-batch takes rows from every device and the
    data-parallel split stays even (no resharding) when B / devices is a multiple of steps.
    """
    if x.shape[0] % steps:
        raise ValueError(f"a batch of {x.shape[0]} cannot be split into "
                         f"config.train.grad_accum_steps={steps} equal micro-batches")
    return jnp.swapaxes(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 0, 1)


def accumulate(loss_and_grads, batch, steps: int):
    """The mean of `loss_and_grads(micro_batch)` (a pytree: loss, grads, aux) over `steps`
    equal micro-batches of `batch` (a pytree of [B, ...] arrays), by a lax.scan that keeps
    one micro-batch's activations alive at a time. For a loss that is a mean over the
    batch this is the big-batch value up to float32 rounding (summation order)."""
    if steps == 1:
        return loss_and_grads(batch)
    micro = jax.tree.map(lambda x: split_micro(x, steps), batch)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(loss_and_grads, first))

    def body(total, mb):
        return jax.tree.map(jnp.add, total, loss_and_grads(mb)), None

    total, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda t: t / steps, total)


def all_finite(*trees) -> jnp.ndarray:
    leaves = [x for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def keep_if(ok, new_tree, old_tree):
    """`new_tree` where ok else `old_tree`: a non-finite step leaves the state untouched."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_tree, old_tree)


def split_batch(batch):
    """A training batch -> (HR uint8 [B, H, W, 3], LR uint8 [B, H/s, W/s, 3] or None).

    The loop passes the pipeline's dict: {'hr'}, or {'hr', 'lr'} for paired data
    (jaxsr.data.paired), whose LR replaces the on-device synthesis; scripts and tests
    may pass the HR array alone."""
    if isinstance(batch, dict):
        return batch["hr"], batch.get("lr")
    return batch, None


def synthesised_only(batch, name: str):
    """The HR of a batch for objectives that need the synthesis's own parameters
    (kernels, noise levels); paired data has none, so it is refused."""
    hr, lr = split_batch(batch)
    if lr is not None:
        raise ValueError(f"config.train.objective={name!r} learns from the kernels and noise "
                         "levels of the on-device synthesis, which paired LR files do not "
                         "have: remove config.data.train_lr_dirs (or use unpaired prepared "
                         "data)")
    return hr


def hr_to_float(hr_uint8) -> jnp.ndarray:
    return hr_uint8.astype(jnp.float32) / 255.0


def pixel_loss(name: str, sr, hr) -> jnp.ndarray:
    if name == "l1":
        return jnp.mean(jnp.abs(sr - hr))
    if name == "l2":
        return jnp.mean(jnp.square(sr - hr))
    if name == "charbonnier":
        return jnp.mean(jnp.sqrt(jnp.square(sr - hr) + 1e-6))
    raise ValueError(f"config.train.loss={name!r} is unknown (l1, l2, charbonnier)")
