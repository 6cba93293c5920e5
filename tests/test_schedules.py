"""Learning-rate schedules, gradient clipping and AdamW (jaxsr.objectives.lr_schedule /
adam) against closed forms and NumPy transcriptions written here, independently of Optax."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsr import objectives
from jaxsr.config_base import base_config


def train_cfg(**fields):
    cfg = base_config().train
    cfg.update(fields)
    return cfg


def values(schedule, steps):
    return np.array([float(schedule(jnp.asarray(s))) for s in steps])


def basicsr_cosine_restart(last_epoch, base_lr, periods, restart_weights, eta_min):
    """BasicSR CosineAnnealingRestartLR.get_lr (last_epoch = our 0-based step), line by
    line; None past the last period (BasicSR indexes restart_weights[None] there)."""
    cumulative_period = [sum(periods[0:i + 1]) for i in range(len(periods))]
    idx = next((i for i, p in enumerate(cumulative_period) if last_epoch <= p), None)
    if idx is None:
        return None
    current_weight = restart_weights[idx]
    nearest_restart = 0 if idx == 0 else cumulative_period[idx - 1]
    current_period = periods[idx]
    return eta_min + current_weight * 0.5 * (base_lr - eta_min) * (
        1 + math.cos(math.pi * ((last_epoch - nearest_restart) / current_period)))


# ---------------------------------------------------------------------------------------
# Schedules

def test_constant_and_default_step_without_milestones_are_flat():
    steps = [0, 1, 57, 999]
    for cfg in (train_cfg(schedule="constant", lr=3e-4, lr_milestones=(10,)),
                train_cfg(schedule="step", lr=3e-4)):
        np.testing.assert_allclose(values(objectives.lr_schedule(cfg), steps), 3e-4, rtol=1e-6)


def test_step_milestones_multiply_from_the_milestone_on():
    cfg = train_cfg(lr=2e-4, lr_milestones=(100, 250, 250), lr_gamma=0.5)
    steps = np.array([0, 99, 100, 101, 249, 250, 400])
    # a milestone listed twice applies twice (BasicSR counts milestones with a Counter)
    expected = 2e-4 * 0.5 ** ((steps >= 100) + 2 * (steps >= 250))
    np.testing.assert_allclose(values(objectives.lr_schedule(cfg), steps), expected, rtol=1e-6)


def test_halve_every():
    cfg = train_cfg(lr=1e-4, lr_halve_every=200, lr_gamma=0.5)
    steps = np.array([0, 199, 200, 399, 400, 1000])
    np.testing.assert_allclose(values(objectives.lr_schedule(cfg), steps),
                               1e-4 * 0.5 ** (steps // 200), rtol=1e-6)


def test_cosine_without_warmup():
    cfg = train_cfg(schedule="cosine", lr=1e-3, min_lr=1e-5, num_steps=1000)
    steps = np.array([0, 1, 250, 500, 999, 1000, 1500])
    t = np.minimum(steps, 1000) / 1000
    expected = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * t))
    np.testing.assert_allclose(values(objectives.lr_schedule(cfg), steps), expected, rtol=1e-5)


def test_cosine_with_warmup_ramps_from_zero_then_decays_over_the_rest():
    cfg = train_cfg(schedule="cosine", lr=1e-3, min_lr=0.0, num_steps=1100, warmup_steps=100)
    steps = np.array([0, 1, 50, 99, 100, 101, 600, 1099, 1100])
    t = np.clip((steps - 100) / 1000, 0, 1)
    expected = np.where(steps < 100, 1e-3 * steps / 100, 1e-3 * 0.5 * (1 + np.cos(np.pi * t)))
    np.testing.assert_allclose(values(objectives.lr_schedule(cfg), steps), expected,
                               rtol=1e-5, atol=1e-9)


def test_cosine_restarts_matches_basicsr_and_holds_min_lr_after_the_last_period():
    periods, weights, eta_min, lr = (10, 20, 15), (1.0, 0.5, 0.25), 1e-7, 2e-4
    cfg = train_cfg(schedule="cosine_restarts", lr=lr, cosine_periods=periods,
                    restart_weights=weights, min_lr=eta_min, num_steps=45)
    steps = np.arange(45)
    expected = [basicsr_cosine_restart(s, lr, periods, weights, eta_min) for s in steps]
    got = values(objectives.lr_schedule(cfg), steps)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)
    # past sum(periods) BasicSR fails; here the lr stays at eta_min (its value at the end)
    np.testing.assert_allclose(values(objectives.lr_schedule(cfg), [45, 46, 1000]), eta_min,
                               rtol=1e-5)


def test_cosine_restarts_default_weights_are_one():
    cfg = train_cfg(schedule="cosine_restarts", lr=1e-4, cosine_periods=(7, 7), num_steps=14)
    expected = [basicsr_cosine_restart(s, 1e-4, (7, 7), (1, 1), 0.0) for s in range(14)]
    np.testing.assert_allclose(values(objectives.lr_schedule(cfg), range(14)), expected,
                               rtol=1e-5, atol=1e-9)


def test_warmup_then_step_keeps_absolute_milestones():
    cfg = train_cfg(lr=1e-4, warmup_steps=50, lr_milestones=(120,), lr_gamma=0.1)
    steps = np.array([0, 10, 49, 50, 51, 119, 120, 300])
    expected = np.where(steps < 50, 1e-4 * steps / 50, 1e-4 * 0.1 ** (steps >= 120))
    np.testing.assert_allclose(values(objectives.lr_schedule(cfg), steps), expected,
                               rtol=1e-5, atol=1e-9)


def test_lr_argument_overrides_train_lr():
    cfg = train_cfg(schedule="cosine", lr=1.0, num_steps=10)
    assert float(objectives.lr_schedule(cfg, lr=0.5)(0)) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------
# Optimizer: clipping, AdamW, which lr an update uses

def numpy_adam(params, grads, lrs, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """torch.optim.Adam / AdamW (decoupled: p -= lr * wd * p) on float64 arrays."""
    p = np.asarray(params, np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p)
    return p


def run_tx(tx, params, grads):
    p = jnp.asarray(params, jnp.float32)
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
        p = optax.apply_updates(p, updates)
    return np.asarray(p)


def test_grad_clip_norm_clips_the_gradient_before_adam():
    rng = np.random.default_rng(0)
    params = rng.normal(size=6)
    # a huge gradient (clipped) followed by a small one (norm 0.3 < 1: left alone); the
    # second Adam step depends on their ratio, so an unclipped first step shows
    grads = [rng.normal(size=6) * 1e4, rng.normal(size=6)]
    grads[1] *= 0.3 / np.linalg.norm(grads[1])
    max_norm = 1.0
    clipped = [g * min(1.0, max_norm / np.linalg.norm(g)) for g in grads]
    cfg = train_cfg(lr=1e-2, grad_clip_norm=max_norm, b2=0.99)
    tx, _ = objectives.adam(cfg)
    got = run_tx(tx, params, grads)
    np.testing.assert_allclose(got, numpy_adam(params, clipped, [1e-2] * 2, b2=0.99),
                               rtol=1e-5, atol=1e-6)
    unclipped = numpy_adam(params, grads, [1e-2] * 2, b2=0.99)
    assert np.abs(got - unclipped).max() > 1e-3   # the check above can tell them apart


def test_adamw_decay_is_decoupled_and_uses_the_scheduled_lr():
    rng = np.random.default_rng(1)
    params = rng.normal(size=5) * 3
    grads = [rng.normal(size=5) for _ in range(3)]
    # milestone at 1: update 0 uses lr, updates 1 and 2 use lr * 0.1
    cfg = train_cfg(lr=1e-2, weight_decay=0.05, lr_milestones=(1,), lr_gamma=0.1)
    tx, schedule = objectives.adam(cfg)
    expected = numpy_adam(params, grads, [1e-2, 1e-3, 1e-3], weight_decay=0.05)
    np.testing.assert_allclose(run_tx(tx, params, grads), expected, rtol=1e-5, atol=1e-7)
    coupled = numpy_adam(params, grads, [1e-2, 1e-3, 1e-3])
    assert np.abs(expected - coupled).max() > 1e-4


def test_default_optimizer_state_is_plain_adam():
    """No clipping and no decay: the same optimizer state as before these options
    existed, so checkpoints of earlier runs still restore."""
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    tx, _ = objectives.adam(train_cfg())
    reference = optax.adam(optax.constant_schedule(1e-4)).init(params)  # as before
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(reference)


# ---------------------------------------------------------------------------------------
# Bad fields name their key

@pytest.mark.parametrize("fields, key", [
    (dict(schedule="linear"), "config.train.schedule"),
    (dict(schedule="cosine_restarts"), "config.train.cosine_periods"),
    (dict(schedule="cosine_restarts", cosine_periods=(10, 0)), "config.train.cosine_periods"),
    (dict(schedule="cosine_restarts", cosine_periods=(10, 10), restart_weights=(1.0,)),
     "config.train.restart_weights"),
    (dict(warmup_steps=1000, num_steps=1000), "config.train.warmup_steps"),
    (dict(warmup_steps=-1), "config.train.warmup_steps"),
    (dict(schedule="cosine", min_lr=1.0), "config.train.min_lr"),
    (dict(lr_milestones=(0, 10)), "config.train.lr_milestones"),
    (dict(grad_clip_norm=-1.0), "config.train.grad_clip_norm"),
    (dict(weight_decay=-0.1), "config.train.weight_decay"),
])
def test_bad_fields_fail_naming_the_key(fields, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        objectives.adam(train_cfg(**fields))
