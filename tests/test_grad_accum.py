"""Batch over chips (config.train.grad_accum_steps, per_device_batch_size, lr_scaling):
4 micro-batches of 4 make the same optimizer step as one batch of 16; EMA and the lr
schedule count optimizer steps; a batch that cannot be split fails naming the fixes."""
import jax
import numpy as np
import pytest

from jaxsr import objectives, train
from jaxsr.config_base import base_config
from jaxsr.models import build_model
from tests.fast_compile import jit as fast_jit

STEPS = 3
MILESTONE = 2          # lr halves after 2 optimizer steps (it would after 1/2 a step if
                       # micro-steps were counted)


def nlsn_config(accum: int):
    """A tiny NLSN (one hashing attention, so the shared rotations matter) with noisy LR
    (a random degradation, so the LR synthesis of the micro-batches matters), EMA on."""
    c = base_config()
    c.model.name, c.scale, c.seed = "nlsn", 2, 3
    for k, v in dict(n_resblocks=1, n_feats=8, res_scale=0.1, chunk_size=8, n_hashes=2,
                     reduction=4, attn_every=8).items():
        c.model[k] = v
    c.degradation.name = "dn20"
    c.train.batch_size, c.train.patch_size, c.train.grad_accum_steps = 16, 16, accum
    c.train.num_steps, c.train.lr, c.train.lr_milestones = STEPS, 1e-3, (MILESTONE,)
    c.train.ema_decay = 0.5
    return c


def run_steps(c, batches):
    _, state, step_fn, repl, data = train.step_setup(c)
    flag = jax.device_put(np.zeros((), np.int32), repl)
    lrs = []
    for hr in batches:
        state, metrics, flag = step_fn(state, jax.device_put(hr, data), flag)
        lrs.append(float(metrics["lr"]))
    assert int(flag) == 0
    return jax.device_get(state), lrs, jax.device_get(metrics)


def max_rel(a, b):
    """max |a - b| over the largest |b| of each leaf, worst leaf."""
    return max(float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-12))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8) for _ in range(STEPS)]
    return run_steps(nlsn_config(1), batches), run_steps(nlsn_config(4), batches), batches


def test_gradients_of_4x4_equal_one_batch_of_16():
    """The accumulated gradient itself (a tiny EDSR: fast to compile; the NLSN steps
    below cover the hashing attention)."""
    c1 = nlsn_config(1)
    c1.model.name, c1.model.n_feats, c1.model.res_scale = "edsr", 8, 1.0
    c4 = c1.copy_and_resolve_references()
    c4.train.grad_accum_steps = 4
    obj1 = objectives.make(c1, build_model(c1))
    obj4 = objectives.make(c4, obj1.model)
    rng = jax.random.PRNGKey(7)
    hr = np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    params = fast_jit(obj1.init_params)(rng, hr)
    deg_rng, lsh_rng = jax.random.split(rng)

    @fast_jit
    def grads(hr):
        out = []
        for obj in (obj1, obj4):
            batch = obj.degrade(hr, deg_rng)
            fn = lambda mb, obj=obj: obj.loss_and_grads(params, mb, lsh_rng)
            out.append(objectives.accumulate(fn, batch, obj.accum_steps))
        lone = jax.tree.map(lambda x: objectives.split_micro(x, 4)[0], obj4.degrade(hr, deg_rng))
        return out, obj4.loss_and_grads(params, lone, lsh_rng)

    ((l1, g1), (l4, g4)), (_, g_lone) = grads(hr)
    assert abs(float(l1) - float(l4)) <= 1e-6 * abs(float(l1))
    assert max_rel(g4, g1) <= 1e-5          # float32 summation order only
    assert max_rel(g_lone, g1) > 1e-2       # one micro-batch alone is far from it


def test_three_optimizer_steps_match(runs):
    (s1, lrs1, m1), (s4, lrs4, m4), _ = runs
    assert int(s1["step"]) == int(s4["step"]) == STEPS
    assert lrs1 == lrs4 == pytest.approx([1e-3, 1e-3, 5e-4])   # schedule in optimizer steps
    assert int(s4["opt_state"][0].count) == STEPS              # Adam bias correction too
    # Adam divides by sqrt(v): a float32 rounding difference in a gradient near 0 is
    # amplified up to ~lr per step; 3 steps of lr 1e-3 on O(0.1) weights stay within 1e-5.
    for key in ("params", "params_ema"):
        err = max(float(np.abs(a - b).max()) for a, b in
                  zip(jax.tree.leaves(s4[key]), jax.tree.leaves(s1[key]), strict=True))
        assert err <= 1e-5, (key, err)
    assert abs(float(m4["loss"]) - float(m1["loss"])) <= 1e-5 * float(m1["loss"])


def test_batch_that_cannot_be_split_names_the_fixes():
    c = nlsn_config(4)
    c.train.batch_size = 12
    with pytest.raises(ValueError) as e:
        train.check_batch(c, n=2)          # 12 / 4 = 3 per micro-batch, not even on 2
    msg = str(e.value)
    assert "config.train.batch_size=12" in msg and "multiple of 2 x 4 = 8" in msg
    assert "config.train.grad_accum_steps=1 or 2 or 3" in msg          # 12 % (k*2) == 0
    assert "per_device_batch_size=1" in msg and "config.train.batch_size=16" in msg
    c.train.batch_size, c.train.grad_accum_steps = 16, 1
    with pytest.raises(ValueError, match="cannot give every one of 64 devices a sample"):
        train.check_batch(c, n=64)


def test_per_device_batch_and_lr_scaling():
    c = nlsn_config(2)
    c.train.per_device_batch_size = 3
    train.check_batch(c, n=4)
    assert c.train.batch_size == 3 * 4 * 2
    c.train.lr_reference_batch = 16
    for rule, factor in (("none", 1.0), ("linear", 24 / 16), ("sqrt", (24 / 16) ** 0.5)):
        c.train.lr_scaling = rule
        assert objectives.lr_batch_factor(c.train) == pytest.approx(factor)
        assert float(objectives.lr_schedule(c.train)(0)) == pytest.approx(1e-3 * factor)
    c.train.lr_scaling = "cubic"
    with pytest.raises(ValueError, match="config.train.lr_scaling='cubic'"):
        objectives.lr_schedule(c.train)
