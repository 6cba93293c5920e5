"""Lost processes and resized runs over loopback (jaxsr.faults, jaxsr.data.shards).

Two chains of launches run at once (module fixture `runs`: killed -> failed -> relaunch
beside ref -> shrink -> grow), each process in its own session with a deadline and killed
by process group at the end (test_distributed.Processes; the training child of each
supervisor dies with it, jaxsr.faults):

  killed   2 processes, SIGKILL to process 1 after step 6 (asynchronous saves: step 2 is
           committed by then): process 0 must stop within the heartbeat bound with exit
           status 75 and the jaxsr message; both relaunched -> FINAL
  failed   process 1 alone fails at start-up: process 0 stops at once with exit status 75
  ref      2 processes, uninterrupted -> FINAL (checkpoints every 2 steps, all kept),
           validated every 4 steps and at the end (which does not change the training)
  shrink   ref's checkpoint 4 copied, resumed by 1 process (2 devices) -> 6
  grow     shrink resumed by 2 processes -> FINAL

The heartbeat bound is HEARTBEAT_S (5 s) here, --heartbeat_timeout=100 by default.
"""
import json
import os
import re
import shutil
import signal
import threading
import time

import jax
import numpy as np
import pytest

from etils import epath
from test_distributed import DEADLINE_S, REPO, Processes, free_port, launch
from jaxsr import checkpoint, config_util, evaluate, faults
from jaxsr.data import pipeline, shard_state

HEARTBEAT_S = 5
# Survivor's bound: the heartbeat timeout, the watch's poll, the supervisor's message
# (it reads the checkpoint folder) and a loaded 2-core CI machine's slack.
EXIT_BOUND_S = HEARTBEAT_S + 15
FINAL = 10
VALIDATE = ["--config.train.eval_every=4", "--config.train.eval_datasets=('skimage_val',)"]
SHARDS = ["--config.data.num_shards=2", "--config.train.keep_checkpoints=10",
          f"--heartbeat_timeout={HEARTBEAT_S}"]


@pytest.fixture(autouse=True)
def _compilation_cache(xla_cache_env, monkeypatch):
    for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
        monkeypatch.setenv(k, xla_cache_env[k])


def start_two(procs, tmp, workdir, num_steps, tag, extra=()):
    port = free_port()
    logs = [tmp / f"{tag}_{i}.log" for i in range(2)]
    started = [procs.add(launch(workdir, num_steps, dist=(port, 2, i), log=logs[i],
                                extra=[*SHARDS, *extra])) for i in range(2)]
    return started, logs


def run_two(procs, tmp, workdir, num_steps, tag, extra=()):
    started, logs = start_two(procs, tmp, workdir, num_steps, tag, extra)
    procs.wait_all(started, logs)
    return logs


def run_one(procs, tmp, workdir, num_steps, tag):
    log = tmp / f"{tag}.log"
    p = procs.add(launch(workdir, num_steps, devices=2, extra=SHARDS, log=log))
    procs.wait_all([p], [log])
    return log


def wait_for(text, log, proc):
    deadline = time.monotonic() + DEADLINE_S
    while text not in log.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)


def kill_one(procs, tmp, workdir):
    """SIGKILL to process 1 after step 6; -> (survivor's exit code, seconds to exit, log)."""
    started, logs = start_two(procs, tmp, workdir, 10 ** 6, "killed")
    wait_for("step 6:", logs[1], started[1])   # checkpoint 2 is committed
    os.kill(started[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code = started[0].wait(timeout=DEADLINE_S)
    return code, time.monotonic() - killed_at, logs[0].read_text()


def one_fails(procs, tmp):
    """Process 1 alone fails at start-up (a validation set it cannot find) while process 0
    waits in a collective: -> (exit codes, process 0's seconds after process 1's, log 0)."""
    port, logs = free_port(), [tmp / f"failed_{i}.log" for i in range(2)]
    bad = ["--config.train.eval_every=2", "--config.train.eval_datasets=('Nope',)"]
    started = [procs.add(launch(tmp / "failed", 4, dist=(port, 2, i), log=logs[i],
                                extra=[*SHARDS, *(bad if i else [])])) for i in range(2)]
    codes = [started[1].wait(timeout=DEADLINE_S)]
    t0 = time.monotonic()
    codes.insert(0, started[0].wait(timeout=DEADLINE_S))
    return codes, time.monotonic() - t0, logs[0].read_text()


def in_background(fn):
    """Runs `fn()` in a thread; -> a function that waits for it and returns its result
    (or raises its error, a pytest failure included)."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller's join
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join():
        thread.join(timeout=4 * DEADLINE_S)
        if "error" in box:
            raise box["error"]
        return box["result"]
    return join


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two independent chains at once (killed -> failed -> relaunch; ref -> shrink ->
    grow): half the wall time, and the kill bound still holds with the other chain's
    load on the machine."""
    tmp = tmp_path_factory.mktemp("pod")
    out = {}
    with Processes() as procs:
        def killed_chain():
            out["exit"] = kill_one(procs, tmp, tmp / "killed")
            out["killed_step"] = checkpoint.latest_step(str(tmp / "killed"))
            out["failed"] = one_fails(procs, tmp)
            run_two(procs, tmp, tmp / "killed", FINAL, "relaunch")

        join = in_background(killed_chain)
        run_two(procs, tmp, tmp / "ref", FINAL, "ref", VALIDATE)
        shutil.copytree(tmp / "ref", tmp / "elastic")
        for step in range(6, FINAL + 1, 2):
            shutil.rmtree(tmp / "elastic" / "checkpoints" / str(step))
        run_one(procs, tmp, tmp / "elastic", 6, "shrink")
        out["shrink_6"] = params(tmp / "elastic", 6)
        run_two(procs, tmp, tmp / "elastic", FINAL, "grow")
        join()
    out["tmp"] = tmp
    return out


def params(workdir, step=None):
    return [np.asarray(x) for x in jax.tree.leaves(checkpoint.load_params(str(workdir), step)[0])]


@pytest.mark.slow
def test_survivor_of_a_sigkill_stops_within_the_bound_with_the_message(runs):
    code, seconds, log = runs["exit"]
    step = runs["killed_step"]
    assert code == faults.PEER_LOST_EXIT, log[-3000:]
    assert seconds < EXIT_BOUND_S, f"{seconds:.1f} s: {log[-3000:]}"
    assert step is not None and step >= 2
    messages = [m for m in log.splitlines() if m.startswith("jaxsr: multi-process training")]
    assert len(messages) == 1, log[-3000:]
    assert "process 1 of 2 was lost" in messages[0]
    assert f"The last complete checkpoint is step {step} in " in messages[0]
    assert re.search(r"\n  \S*python\S* -m jaxsr\.main .*--process_id=0", log)
    assert "core dumped" not in log.lower() and "Traceback" not in log
    print(f"survivor exited {code} {seconds:.1f} s after SIGKILL (heartbeat {HEARTBEAT_S} s)")


@pytest.mark.slow
def test_an_error_in_one_process_stops_the_others_promptly(runs):
    codes, seconds, log = runs["failed"]
    assert codes == [faults.PEER_LOST_EXIT, 1], log[-3000:]
    assert seconds < EXIT_BOUND_S, f"{seconds:.1f} s: {log[-3000:]}"
    assert "process 1 of 2 stopped with an error (its log says which)" in log


@pytest.mark.slow
def test_relaunch_after_a_kill_is_bit_identical_to_an_uninterrupted_run(runs):
    tmp = runs["tmp"]
    assert runs["killed_step"] < FINAL
    for a, b in zip(params(tmp / "killed", FINAL), params(tmp / "ref", FINAL), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_two_to_one_and_one_to_two_process_resumes_continue_the_same_run(runs):
    tmp = runs["tmp"]
    for step, got in ((6, runs["shrink_6"]), (FINAL, params(tmp / "elastic", FINAL))):
        for a, b in zip(got, params(tmp / "ref", step), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The data iterator is saved per shard, so one process restored both shards.
    data = tmp / "elastic" / "checkpoints" / "6" / "data"
    names = sorted(f for f in os.listdir(data) if f.endswith(".json"))
    assert names == ["shard_0-of-2.json", "shard_1-of-2.json"]
    assert json.loads((data / names[1]).read_text())["owners"] == [0, 1]


@pytest.mark.slow
def test_multi_process_validation_equals_a_one_process_evaluation(runs):
    ref = runs["tmp"] / "ref"
    lines = [json.loads(x) for x in open(ref / "metrics.jsonl") if "val/psnr_y" in x]
    assert [x["step"] for x in lines] == [4, 8, FINAL]       # written once: process 0 only
    config = checkpoint.load_config(str(ref))
    with config.unlocked():
        config.eval.datasets = ("skimage_val",)
    for line in lines[1:]:
        entry = evaluate.evaluate(config, str(ref), step=line["step"])["skimage_val"]
        entry = next(iter(entry.values()))
        assert line["val/skimage_val/psnr_y"] == pytest.approx(entry["psnr_y"], abs=1e-9)
        assert line["val/skimage_val/ssim_y"] == pytest.approx(entry["ssim_y"], abs=1e-9)
    best = json.loads((ref / "best" / "best.json").read_text())
    assert best["val_psnr_y"] == max(x["val/psnr_y"] for x in lines)
    assert len(list((ref / "tb").glob("events.out.tfevents.*"))) == 1
    said = [re.search(rf"validation at step {FINAL} .*", (runs["tmp"] / log).read_text())
            for log in ("ref_0.log", "ref_1.log")]
    assert said[0] and said[1] and said[0][0].split(": ", 1)[1].split(", val/seconds")[0] == \
        said[1][0].split(": ", 1)[1].split(", val/seconds")[0]    # both scored, the same

# ----------------------------------------------------------------------------------------
# In-process: the per-shard state against an uninterrupted iterator (no launches).

def small_config(num_shards=2):
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.data.source, c.train.batch_size, c.train.patch_size = "skimage", 4, 16
    c.data.num_shards = num_shards
    return c


def save_states(directory, config, iterators, process_count):
    handler = shard_state.ShardStateHandler()
    for p, it in enumerate(iterators):
        handler.save(directory, shard_state.ShardStateSave(
            it.get_state(), shard_state.Layout.of(config, p, process_count)))


def restored(directory, config, process_count):
    handler = shard_state.ShardStateHandler()
    return [handler.restore(directory, shard_state.ShardStateRestore(
        iter(pipeline.train_dataset(config, p, process_count)),
        shard_state.Layout.of(config, p, process_count))) for p in range(process_count)]


@pytest.mark.parametrize("saved_by,resumed_by", [(1, 2), (2, 1)])
def test_per_shard_state_continues_the_global_stream_on_another_process_count(
        tmp_path, saved_by, resumed_by):
    c = small_config()
    whole = iter(pipeline.train_dataset(c, 0, 1))             # the uninterrupted stream
    before = [iter(pipeline.train_dataset(c, p, saved_by)) for p in range(saved_by)]
    for _ in range(3):
        expected = next(whole)["hr"]
        np.testing.assert_array_equal(
            np.concatenate([next(it)["hr"] for it in before]), expected)
    save_states(epath.Path(tmp_path), c, before, saved_by)
    after = restored(epath.Path(tmp_path), c, resumed_by)
    for _ in range(2):
        np.testing.assert_array_equal(np.concatenate([next(it)["hr"] for it in after]),
                                      next(whole)["hr"])


def test_another_shard_count_is_refused_with_the_fix(tmp_path):
    c = small_config(num_shards=0)          # one shard per process
    save_states(epath.Path(tmp_path), c, [iter(pipeline.train_dataset(c, p, 2))
                                          for p in range(2)], 2)
    with pytest.raises(ValueError, match=r"saved with 2 data shards.*"
                                         r"--config\.data\.num_shards=2"):
        restored(epath.Path(tmp_path), c, 1)
    with pytest.raises(ValueError, match=r"num_shards=2 must be a multiple of the 3 JAX "
                                         r"processes: run on 1, 2 processes"):
        shard_state.Layout.of(small_config(), 0, 3)


def test_checkpoints_of_the_per_process_format_resume_on_their_process_count(tmp_path):
    c = small_config(num_shards=0)
    it = iter(pipeline.train_dataset(c, 0, 1))
    for _ in range(3):
        next(it)
    (tmp_path / "process_0-of-1.json").write_text(json.dumps(it.get_state()))
    fresh = restored(epath.Path(tmp_path), c, 1)[0]
    np.testing.assert_array_equal(next(fresh)["hr"], next(it)["hr"])
    (tmp_path / "process_0-of-1.json").rename(tmp_path / "process_0-of-2.json")
    with pytest.raises(ValueError, match="keeps its data stream per process .* has no "
                                         "process_0-of-1.json"):
        restored(epath.Path(tmp_path), c, 1)
