"""Whole-training parity: 20 optimizer steps of NLSN `:small` and DLSN `:small` in jaxsr
(the real jitted train step of jaxsr.train, torch init, paired batches) and in a plain
PyTorch loop over our torch references (torch.optim.Adam, L1 loss, MultiStepLR), from the
same converted weights, on the same LR/HR batches and the same hash rotations, end at the
same parameters.

Tolerance: the networks agree to ~1e-6 per forward; Adam divides each gradient by its own
running RMS, so a float32 difference in a gradient entry near 0 can move that weight by up
to ~lr in a step, and such differences add up over steps. Measured after 20 steps (lr
5e-4 halved at step 10; weights move by up to 7.5e-3): max |difference| 1.6e-6 (NLSN),
4.1e-7 (DLSN). ATOL = 2e-5 leaves ~10x room for other BLAS/XLA builds and is ~130x below
what a wrong schedule gives (torch without the halving: 2.6e-3); the weights must also
have moved by more than 50 x ATOL.
"""
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxsr import convert, train  # noqa: E402
from jaxsr.convert import core  # noqa: E402
from test_torch_parity import inject_rotations, to_torch_sd  # noqa: E402
from torch_refs.dlsn import DLSN  # noqa: E402
from torch_refs.nlsn import NLSN  # noqa: E402

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
STEPS, BATCH, LR_SIDE, MILESTONE = 20, 2, 12, 10
ATOL = 2e-5


def small_config(name):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("small")
    assert c.model.init == "torch"
    # tiny data for speed; the model, optimizer, loss and schedule kind are the config's
    c.train.batch_size, c.train.patch_size = BATCH, LR_SIDE * c.scale
    c.train.num_steps, c.train.lr_milestones = STEPS, (MILESTONE,)
    return c


def torch_reference(config):
    m = config.model
    common = dict(n_feats=m.n_feats, res_scale=m.res_scale, chunk_size=m.chunk_size,
                  n_hashes=m.n_hashes)
    if m.name == "nlsn":
        return NLSN(config.scale, n_resblocks=m.n_resblocks, attn_every=m.attn_every, **common)
    return DLSN(config.scale, n_resgroups=m.n_resgroups, n_resblocks=m.n_resblocks,
                reduction=m.reduction, **common)


def paired_batches(config):
    """Identical LR/HR uint8 pairs for both loops (HR random, LR its s x s box mean)."""
    rng = np.random.default_rng(0)
    s, out = config.scale, []
    for _ in range(STEPS):
        hr = rng.integers(0, 256, (BATCH, LR_SIDE * s, LR_SIDE * s, 3), dtype=np.uint8)
        lr = hr.reshape(BATCH, LR_SIDE, s, LR_SIDE, s, 3).mean(axis=(2, 4))
        out.append({"hr": hr, "lr": np.round(lr).astype(np.uint8)})
    return out


def step_rotations(config, objective, params, lr_batch, step):
    """The rotations the jaxsr step `step` draws: its RNG as train.make_step_fn and
    SRObjective.train_step derive it, read back through the sown intermediates."""
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step)
    _, lsh_rng = jax.random.split(rng)
    _, state = objective.model.apply({"params": params}, lr_batch, train=True,
                                     rngs={"lsh": lsh_rng}, mutable=["intermediates"])
    inter = core.flatten(state["intermediates"])
    return {p.rsplit("/", 1)[0]: v[-1] if isinstance(v, tuple) else v
            for p, v in inter.items() if p.rsplit("/", 1)[-1].startswith("rotations")}


def run_jaxsr(config, batches):
    objective, state, step_fn, repl, data = train.step_setup(config)
    init = jax.tree.map(np.array, jax.device_get(state["params"]))   # writable copies
    flag = jax.device_put(np.zeros((), np.int32), repl)
    for batch in batches:
        state, _, flag = step_fn(state, jax.device_put(batch, data), flag)
    assert int(flag) == 0
    return objective, init, jax.device_get(state["params"])


def run_torch(config, objective, init, batches):
    torch.manual_seed(0)
    model = torch_reference(config).train()
    model.load_state_dict(to_torch_sd(convert.params_to_state_dict(init, config)), strict=True)
    tc = config.train
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                           betas=(tc.b1, tc.b2), eps=tc.eps)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[MILESTONE], gamma=tc.lr_gamma)
    to_nchw = lambda x: torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
    get_rotations = jax.jit(lambda lr, step: step_rotations(config, objective, init, lr, step))
    for step, batch in enumerate(batches):
        lr = batch["lr"].astype(np.float32) / 255.0
        rotations = {k: np.array(v) for k, v in get_rotations(lr, step).items()}
        assert inject_rotations(config, model, rotations) >= 2
        loss = torch.nn.functional.l1_loss(model(to_nchw(batch["lr"])), to_nchw(batch["hr"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params, _ = convert.state_dict_to_params(sd, config)
    return params


@pytest.fixture
def one_torch_thread():
    """The tiny torch ops run ~6x faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["nlsn", "dlsn"])
def test_twenty_steps_match_pytorch(name, one_torch_thread):
    config = small_config(name)
    batches = paired_batches(config)
    objective, init, ours = run_jaxsr(config, batches)
    theirs = run_torch(config, objective, init, batches)
    moved = err = 0.0
    for path, start in core.flatten(init).items():
        a, b = core.flatten(ours)[path], core.flatten(theirs)[path]
        err = max(err, float(np.abs(a - b).max()))
        moved = max(moved, float(np.abs(a - start).max()))
    assert err <= ATOL, (name, err, moved)
    assert moved > 50 * ATOL, moved
