"""End-to-end: train a few steps, stop, resume, evaluate (the flax examples' train_test).

Also: one step on 8 simulated CPU devices equals the 1-device step.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxsr import checkpoint, config_util, evaluate, train
from tests import fast_compile

TINY = dict(n_resblocks=2, n_feats=8)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path, num_steps=4):
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.model.n_resblocks, c.model.n_feats = TINY["n_resblocks"], TINY["n_feats"]
    c.data.source = "skimage"
    c.train.batch_size = 8
    c.train.patch_size = 32
    c.train.num_steps = num_steps
    c.train.checkpoint_every = 2
    c.train.log_every = 2
    c.train.async_checkpoints = False
    c.train.lr = 1e-3
    c.eval.benchmarks_dir = str(tmp_path / "bench")
    c.eval.datasets = ("Tiny",)
    return c


# Adam at lr 1e-3 moves each weight by ~1e-3 per step: measured 2.6% (relative L2) from
# init to step 4 and 1.3% from step 2 to 4 for the tiny EDSR; a no-op update gives 0.
MIN_MOVE = 2e-3


def params_of(workdir, step=None):
    params, _ = checkpoint.load_params(str(workdir), step)
    return jax.tree.leaves(params)


def initial_params(config):
    """The leaves a run of `config` starts from (the train state before step 1)."""
    from jaxsr import objectives
    from jaxsr.models import build_model
    repl, _ = train.shardings()
    state = train.init_state(objectives.make(config, build_model(config)), config, repl)
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def relative_change(before, after):
    """||after - before|| / ||before|| over all leaves (L2)."""
    diff = sum(np.sum((np.asarray(b, np.float64) - a) ** 2) for a, b in zip(before, after,
                                                                               strict=True))
    norm = sum(np.sum(np.asarray(a, np.float64) ** 2) for a in before)
    return float(np.sqrt(diff / norm))


def make_tiny_benchmark(root, n=2):
    from jaxsr.data import pipeline
    hr_dir = root / "Tiny" / "HR"
    hr_dir.mkdir(parents=True)
    for p in pipeline.skimage_paths("val")[:n]:
        img = np.asarray(Image.open(p).convert("RGB"))[:48, :64]
        Image.fromarray(img).save(hr_dir / (os.path.basename(p).split(".")[0] + ".png"))


def test_resume_equals_uninterrupted_and_evaluate(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.train(tiny_config(tmp_path, 4), str(full))
    train.train(tiny_config(tmp_path, 2), str(cut))            # "stopped" at step 2
    assert checkpoint.latest_step(str(cut)) == 2
    train.train(tiny_config(tmp_path, 4), str(cut))            # resumes 2 -> 4
    assert checkpoint.latest_step(str(cut)) == 4
    for a, b in zip(params_of(full), params_of(cut), strict=True):
        np.testing.assert_array_equal(a, b)
    # The run really trained: the params moved away from the initialisation, also in the
    # resumed half (2 -> 4), every leaf of them.
    lines = [json.loads(x) for x in open(full / "metrics.jsonl")]
    assert [x["step"] for x in lines] == [2, 4] and all(np.isfinite(x["loss"]) for x in lines)
    init, step2 = initial_params(tiny_config(tmp_path, 4)), params_of(cut, step=2)
    assert relative_change(init, params_of(full)) > MIN_MOVE
    assert relative_change(init, step2) < 0.1     # (an independent init: ~sqrt(2))
    assert relative_change(step2, params_of(cut)) > MIN_MOVE
    for a, b in zip(step2, params_of(cut), strict=True):
        assert np.abs(a - b).max() > 0, a.shape

    make_tiny_benchmark(tmp_path / "bench")
    cfg = tiny_config(tmp_path, 4)
    results = evaluate.evaluate(cfg, str(cut))
    saved = json.load(open(cut / "eval" / "results.json"))
    assert saved["Tiny"]["x2"]["images"].keys() == results["Tiny"]["x2"]["images"].keys()
    assert len(saved["Tiny"]["x2"]["images"]) == 2
    assert 5 < saved["Tiny"]["x2"]["psnr_y"] < 60
    assert 0 < saved["Tiny"]["x2"]["ssim_y"] <= 1


def test_checkpoint_of_other_scale_is_refused(tmp_path):
    from jaxsr.models import build_model
    wd = tmp_path / "wd"
    x2 = tiny_config(tmp_path, 2)
    params = build_model(x2).init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))["params"]
    checkpoint.save_params(str(wd), params, x2, step=2)
    cfg = tiny_config(tmp_path, 4)
    cfg.scale = 3
    cfg.train.patch_size = 30
    with pytest.raises(checkpoint.CheckpointMismatchError, match="scale 2 != config.scale 3"):
        train.train(cfg, str(wd))
    assert checkpoint.latest_step(str(wd)) == 2          # nothing lost


_STEP_SCRIPT = r"""
import sys, numpy as np, jax
from jaxsr import config_util, objectives, train
from jaxsr.models import build_model
from jax.sharding import NamedSharding, PartitionSpec as P
c = config_util.load_config_file("configs/edsr.py:small")
c.model.n_resblocks, c.model.n_feats = 2, 8
c.train.batch_size, c.train.patch_size = 8, 32
mesh = train.make_mesh(); repl = NamedSharding(mesh, P()); data = NamedSharding(mesh, P("data"))
obj = objectives.make(c, build_model(c))
state = train.init_state(obj, c, repl)
hr = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
step = train.make_step_fn(obj, c, repl, data)
bad = jax.device_put(np.zeros((), np.int32), repl)
for _ in range(2):
    state, m, bad = step(state, jax.device_put(hr, data), bad)
assert int(bad) == 0
np.savez(sys.argv[1], *[np.asarray(x) for x in jax.tree.leaves(state["params"])],
         loss=np.asarray(m["loss"]), devices=jax.device_count())
"""


def _run_step(path, devices):
    env = fast_compile.subprocess_env(dict(
        os.environ, JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"))
    subprocess.run([sys.executable, "-c", _STEP_SCRIPT, str(path)], check=True, env=env,
                   cwd=REPO, timeout=300)
    return np.load(path)


def test_eight_devices_equal_one(tmp_path):
    one = _run_step(tmp_path / "one.npz", 1)
    eight = _run_step(tmp_path / "eight.npz", 8)
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    for k in one.files:
        if k.startswith("arr_"):
            np.testing.assert_allclose(one[k], eight[k], rtol=1e-4, atol=1e-6)
