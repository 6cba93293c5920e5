"""A run that stops making progress ends with one message within a bound:

  stall   a tiny training whose input pipeline stalls for real (an image folder whose
          reads block forever from sample 40 on: tests/blocking_images.py) is ended by
          the step watchdog (jaxsr.watchdog.StepWatchdog): exit status 75, one message
          naming the process, where its main thread waits and the last checkpoint
  killed  2 processes evaluating (`--mode evaluate`, loopback), SIGKILL to process 1:
          process 0, which waits for process 1's scores, stops within the heartbeat
          bound with exit status 75 and one message (jaxsr.faults.PeerWatch)
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from jaxsr import checkpoint, faults, models, watchdog
from test_distributed import Processes, free_port
from test_exit_bound import REPO, TINY, command, run_until, tiny_config
from test_inference import random_params
from test_pod_eval import start, tiny_config as tiny_eval_config
from tests import blocking_images

# The watchdog's limit here: 20 x the step time, at least MIN_S (the first step: FLOOR_S).
MIN_S, FLOOR_S = 2, 120
STALL_BOUND_S = MIN_S + 25      # + the step time x 20 and a loaded machine's slack
HEARTBEAT_S = 5
# The killed evaluation: only the survivor's wait matters there (a process 1 counted lost
# before its kill ends the run the same way), so a short heartbeat, a short test.
EVAL_HEARTBEAT_S = 2
KILL_BOUND_S = EVAL_HEARTBEAT_S + 15     # as tests/test_pod_faults.py


def test_a_stalled_input_pipeline_ends_the_run_with_one_message(tmp_path, xla_cache_env):
    folder = blocking_images.make_folder(tmp_path / "hr")
    settings = {**TINY, "train.num_steps": 1000, "train.watchdog_min_s": MIN_S,
                "train.watchdog_floor_s": FLOOR_S}
    # Step k pulls batch k + 1 (one ahead): sample 40 (batch 6) holds step 5 back.
    fifo = blocking_images.block_at(folder, tiny_config(folder, settings),
                                    5 * TINY["train.batch_size"])
    log = tmp_path / "train.log"
    try:
        code, seconds = run_until(command(tmp_path / "run", folder, settings), xla_cache_env,
                                  log, "step 4:", fifo)
    finally:
        fifo.stop()
    text = log.read_text()
    messages = [m for m in text.splitlines() if m.startswith("jaxsr: training stalled")]
    assert code == faults.PEER_LOST_EXIT, text[-3000:]
    assert len(messages) == 1, text[-3000:]
    assert "process 0 of 1 stalled: no training step completed for" in messages[0]
    assert "after step 4 (limit" in messages[0]
    assert "its main thread waits in jaxsr/train.py:" in messages[0]
    assert "(device_batches)" in messages[0]            # the input pipeline
    assert f"The last complete checkpoint is step 3 in {tmp_path / 'run'}" in messages[0]
    assert checkpoint.latest_step(str(tmp_path / "run")) == 3
    assert "Traceback" not in text
    assert seconds < STALL_BOUND_S, f"{seconds:.1f} s after step 4: {text[-3000:]}"
    print(f"stalled run exited {code} {seconds:.1f} s after its last step:\n{messages[0]}")


def test_a_stall_in_one_process_ends_both_with_one_message_each(tmp_path, xla_cache_env):
    """2 training processes, each reading its own data shard: process 1's input stalls
    (sample 20 of its stream, step 5); its watchdog ends it and process 0, which waits
    for it in the gradient all-reduce, stops as soon as it reads the stall note."""
    folder = blocking_images.make_folder(tmp_path / "hr")
    settings = {**TINY, "data.num_shards": 2, "train.num_steps": 1000,
                "train.watchdog_min_s": MIN_S, "train.watchdog_floor_s": FLOOR_S}
    per_process = TINY["train.batch_size"] // 2
    fifo = blocking_images.block_at(folder, tiny_config(folder, settings), 5 * per_process,
                                    process_index=1, process_count=2)
    env = dict(xla_cache_env, PYTHONUNBUFFERED="1")
    port, logs = free_port(), [tmp_path / f"train_{i}.log" for i in range(2)]
    with Processes() as procs:
        started = [procs.add(subprocess.Popen(
            command(tmp_path / "run", folder, settings, [
                f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={i}", f"--heartbeat_timeout={HEARTBEAT_S}"]),
            cwd=REPO, env=env, stdout=open(logs[i], "w"), stderr=subprocess.STDOUT,
            start_new_session=True)) for i in range(2)]
        try:
            for i in range(2):
                wait_for("training images: ", logs[i], started[i])
            fifo.stop()                             # both start-up checks are done
            wait_for("step 4:", logs[0], started[0])
            last_step = time.monotonic()
            codes = [p.wait(timeout=120) for p in started]
        except subprocess.TimeoutExpired:
            pytest.fail("still running: " + "".join(f.read_text()[-2000:] for f in logs))
        finally:
            fifo.stop()
        seconds = time.monotonic() - last_step
    texts = [f.read_text() for f in logs]
    messages = [[m for m in t.splitlines() if m.startswith("jaxsr: multi-process training")]
                for t in texts]
    assert codes == [faults.PEER_LOST_EXIT] * 2, texts[0][-2000:] + texts[1][-2000:]
    assert [len(m) for m in messages] == [1, 1], texts[0][-2000:] + texts[1][-2000:]
    assert "process 1 of 2 stalled: no training step completed for" in messages[1][0]
    assert "(device_batches)" in messages[1][0]
    assert "process 1 of 2 stalled (its step watchdog fired" in messages[0][0]
    assert "The last complete checkpoint is step 3 in" in messages[0][0]
    assert seconds < STALL_BOUND_S + HEARTBEAT_S, f"{seconds:.1f} s: {texts[0][-2000:]}"
    print(f"both exited {codes} {seconds:.1f} s after step 4:\n{messages[1][0]}\n"
          f"{messages[0][0]}")


def wait_for(text, log, proc, deadline_s=180):
    deadline = time.monotonic() + deadline_s
    while text not in log.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)


def test_a_killed_evaluation_process_stops_the_other_within_the_bound(tmp_path,
                                                                      xla_cache_env):
    config = tiny_eval_config()
    checkpoint.save_params(str(tmp_path / "wd"), random_params(models.build_model(config)),
                           config)
    env = dict(xla_cache_env, PYTHONUNBUFFERED="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    args = ["jaxsr.main", "--mode=evaluate", "--config=configs/edsr.py:small",
            f"--workdir={tmp_path / 'wd'}", "--config.model.n_resblocks=2",
            "--config.model.n_feats=8", "--config.eval.datasets=('skimage_val',)",
            f"--heartbeat_timeout={EVAL_HEARTBEAT_S}"]
    port, logs = free_port(), [tmp_path / f"eval_{i}.log" for i in range(2)]
    with Processes() as procs:
        started = [start(procs, args, logs[i], env, (port, 2, i)) for i in range(2)]
        wait_for("process 1 of 2, 1 local / 2 global devices", logs[1], started[1])
        os.kill(started[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            code = started[0].wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("process 0 still running 120 s after process 1 was killed: "
                        + logs[0].read_text()[-3000:])
        seconds = time.monotonic() - killed_at
    text = logs[0].read_text()
    messages = [m for m in text.splitlines()
                if m.startswith("jaxsr: multi-process evaluation stopped")]
    assert code == faults.PEER_LOST_EXIT, text[-3000:]
    assert len(messages) == 1, text[-3000:]
    assert "process 1 of 2 was lost" in messages[0]
    assert f"{tmp_path / 'wd'}/eval/results.json" in messages[0]
    assert re.search(r"\n  \S*python\S* -m jaxsr\.main .*--process_id=0", text)
    assert "core dumped" not in text.lower() and "Traceback" not in text
    assert seconds < KILL_BOUND_S, f"{seconds:.1f} s: {text[-3000:]}"
    print(f"survivor exited {code} {seconds:.1f} s after SIGKILL (heartbeat {EVAL_HEARTBEAT_S} s):"
          f"\n{messages[0]}")


# ----------------------------------------------------------------------------------------
# In-process: the limits the watchdog computes (no launches, a fake clock).

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_limits_follow_the_measured_step_time_and_the_host_waits(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(watchdog.time, "monotonic", clock)
    dog = watchdog.StepWatchdog(factor=10, floor_s=300, min_s=1, workdir="unused")

    def step(n, seconds, **kind):
        clock.now += seconds
        dog.step_done(n, **kind)
        return dog.limit()[0]

    assert dog.limit()[0] == 300                    # the first step: compiles
    assert step(1, 50.0, waits=True) == 300         # no step time measured yet
    assert step(2, 1.0) == 300                      # devices caught up with step 1 here
    assert step(3, 0.01) == 300
    assert step(4, 0.01, waits=True) == 300         # the host waits for steps 2-4
    # From "caught up with step 1" (at step 2) to "caught up with step 4" (at step 5).
    typical = (0.01 + 0.01 + 1.5) / 3
    assert step(5, 1.5) == pytest.approx(10 * typical)
    assert step(6, 0.01, waits=True, slow=True) == 300     # + a checkpoint save
    assert step(7, 100.0) == pytest.approx(10 * typical)   # the save is no step time
    assert step(8, 0.01, waits=True) == pytest.approx(10 * typical * 2)  # steps 7, 8
    assert "watchdog_min_s=1" in dog.limit()[1]


@pytest.mark.parametrize("key,value", [("factor", -1), ("floor_s", 0), ("min_s", "9")])
def test_bad_watchdog_settings_name_the_config_key(key, value):
    settings = {"factor": 20, "floor_s": 900, "min_s": 60, key: value}
    with pytest.raises(ValueError, match=f"config.train.watchdog_{key}="):
        watchdog.StepWatchdog(workdir="unused", **settings)
