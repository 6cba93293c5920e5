"""Training objectives: what one optimisation step does.

`config.train.objective` names a module here (`sr`: L1 on synthesised LR; `gan`: NLCUnetGAN;
`kernel`: KENet; `nonblind`: USRNet given the true kernel and noise level). Each has `make(config, model) -> Objective` with

  init_state(rng, hr_batch_uint8) -> state   # dict: 'step', 'params' (SR model), 'opt_state', ...
  train_step(state, hr_batch_uint8, rng) -> (state, metrics)   # pure; jitted by train.py

Shared helpers for the optimizer, the learning-rate schedule and the non-finite guard
live here so that every objective builds them the same way.
"""
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


def lr_schedule(train_cfg, lr: float | None = None) -> optax.Schedule:
    """Step decay: multiply by lr_gamma at each of lr_milestones, or every lr_halve_every."""
    lr = train_cfg.lr if lr is None else lr
    milestones = tuple(int(m) for m in train_cfg.get("lr_milestones", ()) or ())
    gamma = float(train_cfg.get("lr_gamma", 0.5))
    if milestones:
        return optax.piecewise_constant_schedule(lr, {m: gamma for m in milestones})
    every = int(train_cfg.get("lr_halve_every", 0) or 0)
    if every > 0:
        return optax.exponential_decay(lr, transition_steps=every, decay_rate=gamma,
                                       staircase=True)
    return optax.constant_schedule(lr)


def adam(train_cfg, lr: float | None = None):
    """Adam with the config's betas/eps and step schedule; returns (tx, schedule)."""
    schedule = lr_schedule(train_cfg, lr)
    tx = optax.adam(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps)
    return tx, schedule


def all_finite(*trees) -> jnp.ndarray:
    leaves = [x for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def keep_if(ok, new_tree, old_tree):
    """`new_tree` where ok else `old_tree`: a non-finite step leaves the state untouched."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_tree, old_tree)


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
