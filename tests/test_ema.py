"""EMA weights (config.train.ema_decay): the recursion, exact resume, evaluation/upscale on
EMA unless use_ema=False, and BasicSR's {'params', 'params_ema'} through convert."""
import json
import os

import jax
import numpy as np
import pytest

from jaxsr import checkpoint, evaluate, metrics, train, upscale
from jaxsr.data import benchmarks, pipeline
from jaxsr.models import build_model
from test_train_e2e import make_tiny_benchmark, tiny_config

DECAY = 0.6


def ema_config(tmp_path, num_steps):
    c = tiny_config(tmp_path, num_steps)
    c.train.ema_decay = DECAY
    return c


def host(tree):
    return jax.tree.map(np.array, jax.device_get(tree))


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def drive(c, num_steps):
    """The train loop's step by hand, keeping the params after every step; returns them,
    the final state and the step function with its (fresh) batches."""
    _, state, step_fn, repl, data = train.step_setup(c)
    batches = iter(pipeline.train_dataset(c))
    next_batch = lambda: jax.make_array_from_process_local_data(data, next(batches)["hr"])
    flag = jax.device_put(np.zeros((), np.int32), repl)
    seen = [host(state["params"])]
    assert_trees_equal(host(state["params_ema"]), seen[0])        # starts as a copy
    for _ in range(num_steps):
        state, _, flag = step_fn(state, next_batch(), flag)
        seen.append(host(state["params"]))
    return seen, host(state["params_ema"]), state, step_fn, next_batch, repl


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """4 steps by hand (params of every step), and a run of train.train stopped at step 2
    and resumed to 4."""
    tmp = tmp_path_factory.mktemp("ema")
    driven = drive(ema_config(tmp, 4), 4)
    cut = tmp / "cut"
    train.train(ema_config(tmp, 2), str(cut))
    train.train(ema_config(tmp, 4), str(cut))
    make_tiny_benchmark(tmp / "bench")
    return tmp, cut, driven


def test_ema_is_the_recursion_of_the_params(ema_run):
    """ema_k = d ema_{k-1} + (1 - d) p_k in NumPy over the recorded params; a step skipped
    by the non-finite flag leaves the EMA as it was."""
    seen, got, state, step_fn, next_batch, repl = ema_run[2]
    expected = seen[0]
    for p in seen[1:]:
        expected = jax.tree.map(lambda e, q: np.float32(DECAY) * e + np.float32(1 - DECAY) * q,
                                expected, p)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(g, p) for g, p in zip(jax.tree.leaves(got),
                                                      jax.tree.leaves(seen[-1])))
    # The sticky non-finite flag turns a step into a no-op: the EMA does not move either
    # (the step donates `state`: the other tests use the host copies).
    bad = jax.device_put(np.ones((), np.int32), repl)
    after, _, _ = step_fn(state, next_batch(), bad)
    assert_trees_equal(host(after["params_ema"]), got)


def test_resume_with_ema_is_bit_identical(ema_run):
    """Stopped at 2 and resumed equals 4 uninterrupted steps, params and EMA."""
    _, cut, (seen, ema, *_) = ema_run
    weights, meta = checkpoint.load_weights(str(cut))
    assert sorted(weights) == ["params", "params_ema"] and meta["ema_decay"] == DECAY
    assert_trees_equal(weights["params"], seen[4])
    assert_trees_equal(weights["params_ema"], ema)


def reference_psnr(config, params, sample) -> float:
    """SR by a plain model.apply, clamped and rounded, scored on Y."""
    model = build_model(config)
    sr = model.apply({"params": params}, sample.lr[None].astype(np.float32) / 255.0,
                     train=False)[0]
    sr = np.round(np.clip(np.asarray(sr), 0, 1) * 255).astype(np.uint8)
    return metrics.calculate_psnr(sr, sample.hr, crop_border=config.scale,
                                  test_y_channel=True)


def test_evaluate_and_upscale_use_ema_unless_disabled(ema_run, caplog):
    tmp, full, _ = ema_run
    weights, _ = checkpoint.load_weights(str(full))
    c = ema_config(tmp, 4)
    with caplog.at_level("INFO"):
        evaluate.evaluate(c, str(full))
    assert f"using EMA weights (decay {DECAY})" in caplog.text
    raw = ema_config(tmp, 4)
    raw.eval.use_ema = False
    evaluate.evaluate(raw, str(full))
    saved = json.load(open(full / "eval" / "results.json"))["Tiny"]
    ema_entry, raw_entry = saved["x2"], saved["x2 use_ema=False"]        # side by side
    assert ema_entry["settings"]["weights"] == "ema"
    assert raw_entry["settings"]["weights"] == "params"
    assert abs(ema_entry["psnr_y"] - raw_entry["psnr_y"]) > 0.05
    for sample in benchmarks.load_set(c.eval.benchmarks_dir, "Tiny", 2):
        for entry, key in ((ema_entry, "params_ema"), (raw_entry, "params")):
            np.testing.assert_allclose(entry["images"][sample.name]["psnr_y"],
                                       reference_psnr(c, weights[key], sample), atol=0.02)
    up = upscale.Upscaler.from_workdir(str(full))
    assert_trees_equal(host(up.apply_fn.params), weights["params_ema"])
    up_raw = upscale.Upscaler.from_workdir(str(full), ["eval.use_ema=False"])
    assert_trees_equal(host(up_raw.apply_fn.params), weights["params"])


def test_torch_round_trip_keeps_both(ema_run):
    pytest.importorskip("torch")
    import torch
    from jaxsr import convert
    tmp, full, _ = ema_run
    c = ema_config(tmp, 4)
    weights, _ = checkpoint.load_weights(str(full))
    out = tmp / "basicsr.pth"
    summary = convert.export_workdir(c, str(full), str(out))
    assert summary["entries"] == ["params", "params_ema"]
    saved = torch.load(str(out), weights_only=True)
    assert sorted(saved) == ["params", "params_ema"]
    for key in saved:
        expected = convert.params_to_state_dict(weights[key], c)
        assert list(saved[key]) == list(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(saved[key][name].numpy(), value)
    back = tmp / "back"
    assert convert.import_file(c, str(out), str(back))["ema"]
    again, _ = checkpoint.load_weights(str(back))
    assert sorted(again) == ["params", "params_ema"]
    assert_trees_equal(again["params"], weights["params"])
    assert_trees_equal(again["params_ema"], weights["params_ema"])
    # A .safetensors holds one flat state_dict: the EMA weights.
    flat = tmp / "ema.safetensors"
    convert.export_workdir(c, str(full), str(flat))
    loaded = convert.load_state_dict(flat)
    for name, value in convert.params_to_state_dict(weights["params_ema"], c).items():
        np.testing.assert_array_equal(loaded[name], value)


def test_checkpoint_without_ema_still_writes_a_flat_state_dict(ema_run):
    pytest.importorskip("torch")
    import torch
    from jaxsr import convert
    tmp, full, _ = ema_run
    c = tiny_config(tmp, 4)
    params = checkpoint.load_params(str(full))[0]
    checkpoint.save_params(str(tmp / "plain"), params, c)
    assert sorted(checkpoint.load_weights(str(tmp / "plain"))[0]) == ["params"]
    convert.export_workdir(c, str(tmp / "plain"), str(tmp / "plain.pth"))
    saved = torch.load(str(tmp / "plain.pth"), weights_only=True)
    expected = convert.params_to_state_dict(params, c)
    assert list(saved) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(saved[name].numpy(), value)
