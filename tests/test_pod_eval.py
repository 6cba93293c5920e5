"""Evaluation, validation and upscaling spread over processes (jaxsr.eval_engine), over
loopback: 2 JAX processes x 1 CPU device against 1 process with 1 device, launched as a
user would (`python -m jaxsr.main --mode evaluate`, `--mode train` with validation,
`python -m jaxsr.upscale`). All launches start together (module fixture `runs`), each in
its own session with a deadline, and are killed by process group at the end
(test_distributed.Processes).

The criterion is exact: every image runs alone at its own shape through the same program
on any number of processes, so the per-image scores and the upscaled files must be
bit-identical to the one-process ones, and process 0 alone writes.
"""
import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time

import numpy as np
import pytest

from tests.test_cloud_storage import emulator  # noqa: F401,I001 (fixture; sets up gcsfs first)
from test_distributed import REPO, Processes, free_port
from test_inference import random_params
from jaxsr import checkpoint, config_util, eval_engine, evaluate, models, paths, upscale
from jaxsr.data import benchmarks, images

DEADLINE_S = 300        # all launches together, on a loaded 2-core machine
TINY_MODEL = ["--config.model.n_resblocks=2", "--config.model.n_feats=8"]
SETS = "--config.eval.datasets=('Set5','Set14')"
NO_BICUBIC = "--config.eval.compare_bicubic=false"     # the model's scores are the point
TRAIN = ["--config.data.source=skimage", "--config.train.batch_size=2",
         "--config.train.patch_size=16", "--config.train.num_steps=2",
         "--config.train.checkpoint_every=2", "--config.train.log_every=2",
         "--config.train.eval_every=2", "--config.train.eval_datasets=('Set5',)",
         "--config.eval.max_images=3", "--config.data.num_threads=1"]


def tiny_config():
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.model.n_resblocks, c.model.n_feats = 2, 8
    return c


def start(procs, args, log, env, dist=None):
    cmd = [sys.executable, "-m", *args]
    if dist is not None:
        port, n, i = dist
        cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
                f"--process_id={i}"]
    return procs.add(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))


def start_on_terminal(procs, args, log, env, dist, readers):
    """`start`, with stdout and stderr on a pseudo-terminal (a user's shell: process 0
    shows its progress bar there), copied to `log` by a thread added to `readers`."""
    master, terminal = pty.openpty()
    # A terminal's size (a new pseudo-terminal has 0 columns, where tqdm draws nothing).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    cmd = [sys.executable, "-m", *args]
    port, n, i = dist
    cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
            f"--process_id={i}"]
    proc = procs.add(subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                      stdout=terminal, stderr=terminal,
                                      start_new_session=True))
    os.close(terminal)          # the child's copies stay open until it ends
    readers.append(threading.Thread(target=copy_terminal, args=(master, log), daemon=True))
    readers[-1].start()
    return proc


def copy_terminal(master, log):
    with open(log, "wb") as out:
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:     # EIO: every process holding the terminal has ended
                break
            if not data:
                break
            out.write(data)
    os.close(master)


def start_group(procs, tmp, tag, args, env, n, readers=None):
    """`n` processes of one run (n == 1: no jax.distributed); -> [(proc, log)]. With
    `readers`, process 0 runs on a pseudo-terminal (`start_on_terminal`)."""
    port = free_port()
    out = []
    for i in range(n):
        log = tmp / f"{tag}_{i}.log"
        dist = (port, n, i) if n > 1 else None
        if readers is not None and i == 0 and dist is not None:
            out.append((start_on_terminal(procs, args, log, env, dist, readers), log))
        else:
            out.append((start(procs, args, log, env, dist), log))
    return out


def wait_all(started):
    """Waits for every (process, log) within DEADLINE_S; fails with the logs' tails."""
    deadline = time.monotonic() + DEADLINE_S
    for p, log in started:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{log.name} still running after {DEADLINE_S} s: "
                        + log.read_text()[-2000:])


def check_exits(runs, group):
    """The group's processes all exited 0 (else: their exit codes and logs' tails)."""
    codes = runs[3][group]
    if any(codes):
        pytest.fail(f"{group}: exit codes {codes}: " + "".join(
            f"\n--- process {i}\n" + log[-2000:] for i, log in enumerate(runs[1][group])))


def upscale_inputs(folder, shared):
    """A few LR images of different sizes (two of one size), as a user's folder."""
    folder.mkdir()
    lr = shared / "benchmarks" / "Set5" / "LR_bicubic" / "X2"
    for name in sorted(os.listdir(lr))[:4]:
        shutil.copy(lr / name, folder / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data, xla_cache_env):
    tmp = tmp_path_factory.mktemp("pod_eval")
    env = dict(xla_cache_env, PYTHONUNBUFFERED="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    config = tiny_config()
    bench = f"--config.eval.benchmarks_dir={shared_data / 'benchmarks'}"
    params = random_params(models.build_model(config))
    for name in ("one", "two"):
        checkpoint.save_params(str(tmp / name), params, config)
    upscale_inputs(tmp / "in", shared_data)
    groups, readers = {}, []
    with Processes() as procs:
        for name, n in (("one", 1), ("two", 2)):
            groups[f"eval_{name}"] = start_group(
                procs, tmp, f"eval_{name}", ["jaxsr.main", "--mode=evaluate",
                                             "--config=configs/edsr.py:small",
                                             f"--workdir={tmp / name}", *TINY_MODEL, SETS,
                                             NO_BICUBIC, bench], env, n, readers)
            groups[f"upscale_{name}"] = start_group(
                procs, tmp, f"upscale_{name}", ["jaxsr.upscale", f"--workdir={tmp / name}",
                                                f"--input={tmp / 'in'}",
                                                f"--output={tmp / ('out_' + name)}"], env, n)
        groups["train_two"] = start_group(
            procs, tmp, "train_two", ["jaxsr.main", "--config=configs/edsr.py:small",
                                      f"--workdir={tmp / 'train'}", *TINY_MODEL, *TRAIN,
                                      bench], env, 2)
        wait_all([pl for g in groups.values() for pl in g])
    for reader in readers:
        reader.join(timeout=30)
    return (tmp, {k: [log.read_text(errors="replace") for _, log in g]
                  for k, g in groups.items()}, bench,
            {k: [p.returncode for p, _ in g] for k, g in groups.items()})


def images_logged(log: str, set_name: str) -> set:
    return set(re.findall(rf"{set_name}/(\w+): \{{", log))


def test_two_processes_score_exactly_as_one_and_process_0_alone_writes(runs):
    tmp, logs = runs[:2]
    check_exits(runs, "eval_one")
    check_exits(runs, "eval_two")
    one = json.loads((tmp / "one" / "eval" / "results.json").read_text())
    two = json.loads((tmp / "two" / "eval" / "results.json").read_text())
    assert sorted(one) == sorted(two) == ["Set14", "Set5"]
    for set_name, n in (("Set5", 5), ("Set14", 14)):
        a, b = one[set_name]["x2"], two[set_name]["x2"]
        assert len(a["images"]) == len(b["images"]) == n
        for name, row in a["images"].items():
            for k in ("psnr_y", "ssim_y"):
                assert b["images"][name][k] == row[k], (set_name, name, k)
        assert (b["psnr_y"], b["ssim_y"]) == (a["psnr_y"], a["ssim_y"])
        # The images really were split: each process scored its own, none twice.
        mine = [images_logged(log, set_name) for log in logs["eval_two"]]
        assert mine[0] and mine[1] and not mine[0] & mine[1]
        assert mine[0] | mine[1] == set(a["images"])
    # One writer: only process 0 wrote results.json and printed the table.
    assert logs["eval_two"][0].count("written to") == 2
    assert "written to" not in logs["eval_two"][1]
    assert "model: edsr" in logs["eval_two"][0] and "model: edsr" not in logs["eval_two"][1]
    assert [f for f in os.listdir(tmp / "two" / "eval") if f.endswith(".json")] == \
        ["results.json"]


def test_a_relaunch_loads_process_1s_eval_programs_from_its_own_cache_entries(runs,
                                                                               xla_cache_env):
    """JAX's cache is written by process 0 alone and keyed by device, so process 1 used to
    compile its eval shapes at every launch; jaxsr.process_executables keeps its own
    entries. The same 2-process evaluation launched again: process 1 compiles nothing (a
    hit per shape, no miss of the eval forward) and scores exactly as before."""
    tmp = runs[0]
    check_exits(runs, "eval_two")
    shutil.copytree(tmp / "two", tmp / "two_again", ignore=shutil.ignore_patterns("eval"))
    env = dict(xla_cache_env, PYTHONUNBUFFERED="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    with Processes() as procs:
        started = start_group(procs, tmp, "eval_again", [
            "jaxsr.main", "--mode=evaluate", "--config=configs/edsr.py:small",
            f"--workdir={tmp / 'two_again'}", *TINY_MODEL, SETS, NO_BICUBIC, runs[2]], env, 2)
        wait_all(started)
    logs = [log.read_text(errors="replace") for _, log in started]
    assert [p.returncode for p, _ in started] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    first = runs[1]["eval_two"][1]
    assert "process cache: stored" in first        # the first launch compiled and kept them
    assert logs[1].count("process cache hit") == first.count("process cache: stored")
    assert "MISS for 'jit__lambda'" not in logs[1] and "stored" not in logs[1]
    before = json.loads((tmp / "two" / "eval" / "results.json").read_text())
    again = json.loads((tmp / "two_again" / "eval" / "results.json").read_text())
    for set_name in ("Set5", "Set14"):
        scores = [{name: (row["psnr_y"], row["ssim_y"]) for name, row in r[set_name]["x2"]
                   ["images"].items()} for r in (before, again)]
        assert scores[0] == scores[1] and len(scores[0]) > 0


def test_process_0_on_a_terminal_shows_a_bar_over_the_images_of_both_processes(runs):
    """Process 0 ran on a pseudo-terminal: its bar of each set counts the other process's
    images too (it ends at 14/14 though process 0 scored fewer)."""
    logs = runs[1]
    check_exits(runs, "eval_two")
    for set_name, n in (("Set5", 5), ("Set14", 14)):
        own = len(images_logged(logs["eval_two"][0], set_name))
        assert 0 < own < n
        counts = [int(k) for k in re.findall(rf"{set_name}:.*?\| *(\d+)/{n} ",
                                             logs["eval_two"][0])]
        assert counts and max(counts) == n, logs["eval_two"][0][-3000:]


def test_a_folder_upscaled_by_two_processes_equals_one_process_file_by_file(runs):
    tmp, logs = runs[:2]
    check_exits(runs, "upscale_one")
    check_exits(runs, "upscale_two")
    names = sorted(os.listdir(tmp / "out_one"))
    assert names == sorted(os.listdir(tmp / "in"))
    assert sorted(os.listdir(tmp / "out_two")) == names
    for n in names:
        assert (tmp / "out_two" / n).read_bytes() == (tmp / "out_one" / n).read_bytes(), n
    assert "upscaled 4 of 4" in logs["upscale_two"][0]
    assert "upscaled" not in logs["upscale_two"][1]


def test_two_process_validation_equals_a_one_process_evaluation_exactly(runs):
    tmp, logs = runs[:2]
    check_exits(runs, "train_two")
    wd = tmp / "train"
    lines = [json.loads(x) for x in open(wd / "metrics.jsonl") if "val/psnr_y" in x]
    assert [x["step"] for x in lines] == [2]
    config = checkpoint.load_config(str(wd))
    with config.unlocked():
        config.eval.datasets = ("Set5",)
    entry = evaluate.evaluate(config, str(wd), step=2)["Set5"]
    entry = next(iter(entry.values()))
    assert lines[0]["val/Set5/psnr_y"] == entry["psnr_y"]
    assert lines[0]["val/Set5/ssim_y"] == entry["ssim_y"]
    mine = [images_logged(log, "Set5") for log in logs["train_two"]]
    assert mine[0] and mine[1] and not mine[0] & mine[1]
    assert mine[0] | mine[1] == set(entry["images"])


# ---------------------------------------------------------------------------------------
# In-process

def test_deal_cuts_shape_sorted_runs_of_equal_cost():
    keys = [(2, 2), (1, 1), (2, 2), (1, 1), (3, 3), (1, 1)]
    costs = [4, 1, 4, 1, 9, 1]
    runs = eval_engine.deal(costs, keys, 3)
    assert runs == [[1, 3, 5, 0], [2], [4]]          # by shape, then index; 7 | 4 | 9
    assert sorted(i for r in eval_engine.deal(costs, keys, 10) for i in r) == list(range(6))
    assert eval_engine.deal([1, 1], [0, 0], 1) == [[0, 1]]


TWO_DEVICES_DRIVER = """
import json, sys
import jax
from jaxsr import evaluate, forward, models
from test_inference import random_params
from test_pod_eval import tiny_config
devices = jax.local_devices()
assert len(devices) == 2, devices
config = tiny_config()
config.eval.benchmarks_dir, config.eval.max_images = sys.argv[1], 4
model = models.build_model(config)
apply_fn = evaluate.make_apply_fn(model, random_params(model, seed=1))
samples = evaluate.load_samples(config, "Set14")
out = []
for d in (devices[:1], devices):
    out.append(evaluate.score_samples(config, apply_fn, "Set14", samples, devices=d)["images"])
    out.append(forward.num_compiled(apply_fn))     # device 1 compiled its own shapes too
# Tiles (one tile shape): all the tiles of an image run on the device it is dealt to.
config.eval.tile, config.eval.tile_overlap = 64, 8
for d in (devices[:1], devices):
    out.append(evaluate.score_samples(config, apply_fn, "Set14", samples[:2],
                                      devices=d)["images"])
print(json.dumps(out))
"""


def test_two_devices_of_one_process_score_exactly_as_one(shared_data, xla_cache_env):
    """The threads of an accelerator host (one per device), here on 2 CPU devices: whole
    images, then tiled ones (each image's tiles on its one device)."""
    env = dict(xla_cache_env, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.path.join(REPO, "tests"))
    res = subprocess.run([sys.executable, "-c", TWO_DEVICES_DRIVER,
                          str(shared_data / "benchmarks")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    one, compiled_one, two, compiled_two, tiled_one, tiled_two = json.loads(
        res.stdout.strip().splitlines()[-1])
    assert compiled_two > compiled_one > 0
    for a, b, n in ((one, two, 4), (tiled_one, tiled_two, 2)):
        assert sorted(a) == sorted(b) and len(a) == n
        for name, row in a.items():
            assert {k: v for k, v in b[name].items() if k != "seconds"} == \
                {k: v for k, v in row.items() if k != "seconds"}
    # The tiled runs computed other SRs (the tiles took effect).
    assert any(tiled_one[n]["psnr_y"] != one[n]["psnr_y"] for n in tiled_one)


def test_gray_y_scores_bridge_replicated_to_rgb_on_y(shared_data):
    """config.eval.gray='y' against an independent NumPy Y of the RGB copy; 'gray' scores
    the one channel against the SR's luma (= Y rescaled): +20 log10(255/219) dB apart."""
    root = str(shared_data / "benchmarks")
    gray = {s.name: s for s in benchmarks.load_set(root, "Set14", 2)}["bridge"]
    y = {s.name: s for s in benchmarks.load_set(root, "Set14", 2, gray="y")}["bridge"]
    assert gray.hr.shape[2] == 1 and y.hr.shape[2] == 3
    np.testing.assert_array_equal(y.hr, np.repeat(gray.hr, 3, axis=2))
    c = config_util.load_config_file(os.path.join(REPO, "configs/bicubic.py"))
    sr = evaluate.bicubic_upscale(y.lr, 2)
    got = evaluate.score(c, sr, y.hr)["psnr_y"]

    def luma(img):                       # BT.601 Y, written out independently
        img = img.astype(np.float64)
        return 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255

    a, b = luma(sr)[2:-2, 2:-2], luma(y.hr)[2:-2, 2:-2]
    want = 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2))
    assert got == pytest.approx(want, abs=1e-10)
    on_gray = evaluate.score(c, sr, gray.hr)["psnr_y"]
    assert got - on_gray == pytest.approx(20 * np.log10(255 / 219), abs=1e-9)
    with pytest.raises(ValueError, match="config.eval.gray"):
        benchmarks.load_set(root, "Set14", 2, gray="rgb")


def test_pad_to_changes_the_padded_shape_and_the_result_key():
    c = tiny_config()
    assert evaluate.padded_lr_shape(c, (37, 50)) == (37, 50)
    c.eval.pad_to = 16
    assert evaluate.padded_lr_shape(c, (37, 50)) == (48, 64)
    assert evaluate.result_key(c, None) == "x2 pad_to=16"
    c.eval.pad_to, c.eval.gray = 0, "y"
    assert evaluate.result_key(c, None) == "x2 gray=y"


def test_benchmarks_and_upscale_folders_may_be_gs(emulator, shared_data, tmp_path):  # noqa: F811
    """benchmarks_dir (a plain set and DIV2KRK) and upscale's --input/--output in a bucket
    (the emulator) give what the local folders give."""
    set5 = shared_data / "benchmarks" / "Set5"
    lr_dir = set5 / "LR_bicubic" / "X2"
    paths._fs().put(str(set5 / "HR") + "/", "bucket/bench/Set5/HR", recursive=True)
    paths._fs().put(str(lr_dir) + "/", "bucket/bench/Set5/LR_bicubic/X2", recursive=True)
    local = benchmarks.load_set(str(shared_data / "benchmarks"), "Set5", 2)
    remote = benchmarks.load_set("gs://bucket/bench", "Set5", 2)
    assert [s.name for s in remote] == [s.name for s in local] and len(local) == 5
    names = [s.name for s in local]
    for a, b in zip(local, remote):
        np.testing.assert_array_equal(a.hr, b.hr)
        np.testing.assert_array_equal(a.lr, b.lr)
    krk = shared_data / "benchmarks" / "DIV2KRK"       # a blind set: its kernels too
    for rel in ("gt/im_43.png", "lr_x4/im_43.png", "gt_k_x4/kernel_43.mat"):
        paths._fs().put(str(krk / rel), f"bucket/bench/DIV2KRK/{rel}")
    remote = benchmarks.load_set("gs://bucket/bench", "DIV2KRK", 4)
    local = benchmarks.load_set(str(shared_data / "benchmarks"), "DIV2KRK", 4)[:1]
    assert [s.name for s in remote] == [s.name for s in local] == ["im_43"]
    for k in ("hr", "lr"):
        np.testing.assert_array_equal(getattr(remote[0], k), getattr(local[0], k))
    np.testing.assert_array_equal(remote[0].extras["kernel"], local[0].extras["kernel"])
    # Sizes from the objects' first bytes (ranged reads: no whole read), as locally.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "read_bytes", lambda p: pytest.fail(f"whole read of {p}"))
        sizes = [images.image_size(f"gs://bucket/bench/Set5/HR/{n}.png") for n in names]
    assert sizes == [images.image_size(str(set5 / "HR" / f"{n}.png")) for n in names]
    up = upscale.Upscaler.from_workdir("bicubic", ["scale=2"])
    pairs = upscale.output_pairs("gs://bucket/bench/Set5/LR_bicubic/X2", "gs://bucket/out")
    upscale.check_pairs(pairs)
    assert upscale.upscale_files(up, pairs, progress=False) == []
    with pytest.raises(FileExistsError, match="--overwrite"):
        upscale.check_pairs(pairs)
    mine = upscale.output_pairs(str(lr_dir), str(tmp_path / "out"))
    assert upscale.upscale_files(up, mine, progress=False) == []
    assert [paths.basename(d) for _, d in pairs] == [os.path.basename(d) for _, d in mine]
    for (_, remote_out), (_, local_out) in zip(pairs, mine):
        assert paths.read_bytes(remote_out) == open(local_out, "rb").read()


def test_upscale_deals_local_inputs_by_their_padded_shape(shared_data, tmp_path):
    """An input's header gives the shape it runs at (the engine's dealing key); an
    unreadable file gets (0, 0)."""
    up = upscale.Upscaler.from_workdir("bicubic", ["scale=2"])
    baby = shared_data / "benchmarks" / "Set5" / "LR_bicubic" / "X2" / "babyx2.png"
    assert upscale.run_shape(up, str(baby)) == (256, 256)
    up.options.update(multiple=24, min_size=300)
    assert upscale.run_shape(up, str(baby)) == (312, 312)      # padded as it will run
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert upscale.run_shape(up, str(tmp_path / "broken.png")) == (0, 0)
