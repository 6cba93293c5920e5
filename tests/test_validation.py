"""Validation during training (config.train.eval_every) and the best checkpoint: training
unchanged, metrics equal to `--mode evaluate` of the same weights, best kept and loadable."""
import glob
import json

import numpy as np
import pytest

from jaxsr import checkpoint, evaluate, train
from test_ema import assert_trees_equal
from test_train_e2e import make_tiny_benchmark, tiny_config

STEPS = 4


def val_config(tmp, *, eval_every, keep=10, ema=0.5, num_steps=STEPS):
    c = tiny_config(tmp, num_steps)
    c.train.ema_decay = ema
    c.train.eval_every = eval_every
    c.train.eval_datasets = ("Tiny",)
    c.train.checkpoint_every = 1
    c.train.keep_checkpoints = keep
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same EMA run without validation (a checkpoint of every step kept) and with
    validation at every step (keep_checkpoints=1)."""
    tmp = tmp_path_factory.mktemp("val")
    make_tiny_benchmark(tmp / "bench")
    plain, validated = tmp / "plain", tmp / "validated"
    train.train(val_config(tmp, eval_every=0), str(plain))
    train.train(val_config(tmp, eval_every=1, keep=1), str(validated))
    return tmp, plain, validated


def val_lines(workdir):
    lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    return [x for x in lines if "val/psnr_y" in x]


def test_validation_does_not_change_training(runs):
    _, plain, validated = runs
    a, _ = checkpoint.load_weights(str(plain))
    b, meta = checkpoint.load_weights(str(validated))
    assert meta["step"] == STEPS and sorted(b) == ["params", "params_ema"]
    assert_trees_equal(a, b)


def test_metrics_equal_evaluate_of_the_same_weights(runs):
    tmp, plain, validated = runs
    lines = val_lines(validated)
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1))
    for line in lines:
        result = evaluate.evaluate(val_config(tmp, eval_every=0), str(plain), step=line["step"])
        entry = result["Tiny"]["x2"]
        assert entry["settings"]["weights"] == "ema"
        assert line["val/Tiny/psnr_y"] == pytest.approx(entry["psnr_y"], abs=1e-9)
        assert line["val/Tiny/ssim_y"] == pytest.approx(entry["ssim_y"], abs=1e-9)
        assert line["val/psnr_y"] == line["val/Tiny/psnr_y"]      # mean of one set
        assert line["val/seconds"] > 0
    assert glob.glob(str(validated / "tb" / "events.out.tfevents.*"))


def tb_events(folder):
    """The Event protos of tensorboardX event files (TFRecord: u64 length, u32 crc, data,
    u32 crc), read with tensorboardX's own proto."""
    import struct
    from tensorboardX.proto import event_pb2
    events = []
    for path in sorted(glob.glob(str(folder / "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def test_tensorboard_has_the_scalars_and_crops(runs):
    import io
    from PIL import Image
    values = [v for e in tb_events(runs[2] / "tb") for v in e.summary.value]
    images = {v.tag: v.image for v in values if v.HasField("image")}
    assert {"val/Tiny/lr", "val/Tiny/sr", "val/Tiny/hr"} <= set(images)
    scalars = [(v.tag, v.simple_value) for v in values if not v.HasField("image")]
    psnrs = [x["val/Tiny/psnr_y"] for x in val_lines(runs[2])]
    logged = [value for tag, value in scalars if tag == "val/Tiny/psnr_y"]
    np.testing.assert_allclose(logged, psnrs, rtol=1e-6)
    # The first Tiny image is 64x48 (LR 32x24, smaller than the 48 px crop): all of it.
    for tag in ("val/Tiny/lr", "val/Tiny/sr", "val/Tiny/hr"):
        img = Image.open(io.BytesIO(images[tag].encoded_image_string))
        assert img.size == (64, 48) and img.mode == "RGB"


def test_best_is_the_best_step_and_loads(runs):
    tmp, plain, validated = runs
    lines = val_lines(validated)
    best_line = max(lines, key=lambda x: x["val/psnr_y"])
    record = checkpoint.read_best(str(validated))
    assert record["step"] == best_line["step"] and record["weights"] == "ema"
    assert record["val_psnr_y"] == pytest.approx(best_line["val/psnr_y"], abs=1e-12)
    best, _ = checkpoint.load_weights(str(validated), "best")
    at_step, _ = checkpoint.load_weights(str(plain), best_line["step"])
    assert_trees_equal(best, at_step)
    assert checkpoint.latest_step(str(validated)) == STEPS        # keep_checkpoints=1
    result = evaluate.evaluate(val_config(tmp, eval_every=0), str(validated), step="best")
    assert result["Tiny"]["x2"]["step"] == best_line["step"]
    assert result["Tiny"]["x2"]["psnr_y"] == pytest.approx(best_line["val/psnr_y"], abs=1e-9)


def test_best_survives_keep_checkpoints(tmp_path):
    """Without EMA and with lr 0 after step 2, later validations only tie: the best stays
    step 2 while keep_checkpoints=1 removes every training checkpoint but the last."""
    make_tiny_benchmark(tmp_path / "bench")
    wd = tmp_path / "wd"
    train.train(val_config(tmp_path, eval_every=2, keep=1, ema=0.0, num_steps=2), str(wd))
    at_two, _ = checkpoint.load_weights(str(wd), 2)
    frozen = val_config(tmp_path, eval_every=1, keep=1, ema=0.0, num_steps=4)
    frozen.train.lr = 0.0
    train.train(frozen, str(wd))
    assert [x["step"] for x in val_lines(wd)] == [2, 3, 4]
    assert len({x["val/psnr_y"] for x in val_lines(wd)}) == 1
    assert checkpoint.latest_step(str(wd)) == 4
    assert not (wd / "checkpoints" / "2").exists()
    assert checkpoint.read_best(str(wd))["step"] == 2
    assert sorted(p.name for p in (wd / "best" / "checkpoints").iterdir()) == ["2"]
    best, meta = checkpoint.load_weights(str(wd), "best")
    assert meta["step"] == 2 and meta["best"]["step"] == 2
    assert_trees_equal(best, at_two)
    # The run has no EMA: switching it on in a resumed run is refused, saying why.
    with pytest.raises(checkpoint.CheckpointMismatchError, match="without EMA weights"):
        train.train(val_config(tmp_path, eval_every=0, ema=0.5, num_steps=5), str(wd))
    assert checkpoint.latest_step(str(wd)) == 4


def test_cli_evaluates_step_best_and_refuses_a_bad_step(runs, xla_cache_env):
    import subprocess
    import sys
    tmp, _, validated = runs
    base = [sys.executable, "-m", "jaxsr.main", "--config", "configs/edsr.py:small",
            "--workdir", str(validated), "--mode", "evaluate",
            "--config.model.n_resblocks=2", "--config.model.n_feats=8",
            f"--config.eval.benchmarks_dir={tmp / 'bench'}", "--config.eval.datasets=('Tiny',)"]
    repo = checkpoint.__file__.rsplit("/jaxsr/", 1)[0]
    ok = subprocess.run(base + ["--step", "best"], cwd=repo, env=xla_cache_env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    step = checkpoint.read_best(str(validated))["step"]
    assert f"results (step {step}" in ok.stdout + ok.stderr
    bad = subprocess.run(base + ["--step", "latest"], cwd=repo, env=xla_cache_env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--step='latest'" in bad.stderr
