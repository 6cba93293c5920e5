"""Multi-process training over loopback: 2 JAX processes (gloo CPU collectives) x 1 CPU
device each, launched through `python -m jaxsr.main` as a cluster user would, against one
process with 2 devices and the same data shards (`config.data.num_shards=2`).

Every process is started in its own session, has a deadline, and is killed (by process
group) when the test ends, whatever happened.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxsr import checkpoint, config_util
from jaxsr.data import pipeline
from tests import fast_compile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 120

TINY = ["--config.model.n_resblocks=2", "--config.model.n_feats=8",
        "--config.data.source=skimage", "--config.train.batch_size=8",
        "--config.train.patch_size=32", "--config.train.lr=1e-3",
        "--config.train.log_every=2", "--config.train.checkpoint_every=2",
        "--config.data.num_threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _compilation_cache(xla_cache_env, monkeypatch):
    # The launches below share one XLA cache: the 2-process runs compile once.
    for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
        monkeypatch.setenv(k, xla_cache_env[k])


def launch(workdir, num_steps, *, devices=1, extra=(), dist=None, log=None):
    env = fast_compile.subprocess_env(dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"))
    cmd = [sys.executable, "-m", "jaxsr.main", "--config", "configs/edsr.py:small",
           "--workdir", str(workdir), f"--config.train.num_steps={num_steps}", *TINY, *extra]
    if dist is not None:
        port, n, i = dist
        cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
                f"--process_id={i}"]
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


class Processes:
    """Started processes, always killed (whole process group) on exit."""

    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def wait_all(self, procs, logs=()):
        deadline = time.monotonic() + DEADLINE_S
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {p.args[-1]} still running after {DEADLINE_S} s: "
                            + "".join(open(f).read()[-2000:] for f in logs))
        codes = [p.returncode for p in procs]
        if any(codes):
            pytest.fail(f"exit codes {codes}: " + "".join(open(f).read()[-3000:] for f in logs))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)


def run_two_processes(procs, tmp_path, workdir, num_steps, tag):
    port = free_port()
    logs = [tmp_path / f"{tag}_{i}.log" for i in range(2)]
    started = [procs.add(launch(workdir, num_steps, dist=(port, 2, i), log=logs[i]))
               for i in range(2)]
    procs.wait_all(started, logs)
    return logs


def params_of(workdir):
    params, meta = checkpoint.load_params(str(workdir))
    return [np.asarray(x) for x in __import__("jax").tree.leaves(params)], meta


@pytest.mark.slow
def test_two_processes_equal_one_process_and_resume_exactly(tmp_path):
    with Processes() as procs:
        one = tmp_path / "one"
        single = procs.add(launch(one, 6, devices=2, extra=["--config.data.num_shards=2"],
                                  log=tmp_path / "one.log"))
        procs.wait_all([single], [tmp_path / "one.log"])
        two = tmp_path / "two"
        logs = run_two_processes(procs, tmp_path, two, 6, "two")
        cut = tmp_path / "cut"
        run_two_processes(procs, tmp_path, cut, 4, "cut")          # stopped at step 4
        run_two_processes(procs, tmp_path, cut, 6, "resume")       # resumed 4 -> 6
    assert "process 1 of 2, 1 local / 2 global devices" in open(logs[1]).read()
    p_one, _ = params_of(one)
    p_two, meta = params_of(two)
    p_cut, _ = params_of(cut)
    assert meta["step"] == 6
    for a, b, c in zip(p_one, p_two, p_cut, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(c, b)
    # Each process checkpointed its own data shard's stream; only process 0 wrote the logs.
    step_dir = two / "checkpoints" / "6" / "data"
    assert sorted(f for f in os.listdir(step_dir) if f.startswith("shard_")) == [
        "shard_0-of-2.json", "shard_1-of-2.json"]
    steps = [json.loads(x)["step"] for x in open(two / "metrics.jsonl")]
    assert steps == [2, 4, 6]
    # The runs saw identical losses, and the training really moved the parameters: the
    # stopped run equals the uninterrupted one at step 4, and the resumed 2-process
    # segment 4 -> 6 changed every leaf (by > MIN_MOVE relative L2 in all).
    losses = [[json.loads(x)["loss"] for x in open(d / "metrics.jsonl")] for d in (one, two)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    import jax
    from test_train_e2e import MIN_MOVE, relative_change
    at4 = [[np.asarray(x) for x in jax.tree.leaves(checkpoint.load_params(str(d), 4)[0])]
           for d in (cut, two)]
    for a, b in zip(*at4, strict=True):
        np.testing.assert_array_equal(a, b)
    assert relative_change(at4[0], p_cut) > MIN_MOVE
    assert all(np.abs(a - b).max() > 0 for a, b in zip(at4[0], p_cut, strict=True))


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    wd = tmp_path / "pre"
    port = free_port()
    logs = [tmp_path / f"pre_{i}.log" for i in range(2)]
    with Processes() as procs:
        started = [procs.add(launch(wd, 100000, dist=(port, 2, i), log=logs[i],
                                    extra=["--config.train.checkpoint_every=1000000"]))
                   for i in range(2)]
        deadline = time.monotonic() + DEADLINE_S
        while "step 2:" not in open(logs[0]).read():          # training has started
            assert time.monotonic() < deadline and started[0].poll() is None, \
                open(logs[0]).read()[-3000:]
            time.sleep(0.2)
        started[1].send_signal(signal.SIGTERM)
        procs.wait_all(started, logs)
        step = checkpoint.latest_step(str(wd))
        assert step is not None and 2 < step < 100000
        assert sorted(f for f in os.listdir(wd / "checkpoints" / str(step) / "data")
                      if f.startswith("shard_")) == [
            "shard_0-of-2.json", "shard_1-of-2.json"]
        for log in logs:
            assert f"preemption agreed by all processes at step {step}" in open(log).read()
        run_two_processes(procs, tmp_path, wd, step + 2, "after")   # resumes from there
    assert checkpoint.latest_step(str(wd)) == step + 2


class RecordingReader(pipeline.ImageReader):
    """An ImageReader that remembers which items it was asked for."""

    def __init__(self, reader):
        super().__init__(reader.source, cache=False)
        self.asked = set()

    def __call__(self, index):
        self.asked.add(index)
        return super().__call__(index)


def test_each_process_reads_only_its_own_shard(monkeypatch):
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.data.source, c.train.batch_size, c.train.patch_size = "skimage", 4, 16
    readers = []
    make_reader = pipeline.make_reader
    monkeypatch.setattr(pipeline, "make_reader",
                        lambda config: readers.append(RecordingReader(make_reader(config)))
                        or readers[-1])
    for p in range(2):
        it = iter(pipeline.train_dataset(c, p, 2))
        for _ in range(8):                       # a few epochs of a shard
            next(it)
    n = len(readers[0])
    assert readers[0].asked == set(range(0, n, 2))
    assert readers[1].asked == set(range(1, n, 2))


def test_global_batch_is_independent_of_the_process_count():
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.data.source, c.train.batch_size, c.train.patch_size = "skimage", 4, 16
    c.data.num_shards = 2
    single = iter(pipeline.train_dataset(c, 0, 1))
    parts = [iter(pipeline.train_dataset(c, p, 2)) for p in range(2)]
    for _ in range(3):
        np.testing.assert_array_equal(
            next(single)["hr"], np.concatenate([next(it)["hr"] for it in parts]))


def test_bad_shard_counts_are_refused():
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.data.source, c.train.batch_size = "skimage", 6
    c.data.num_shards = 4
    with pytest.raises(ValueError, match="batch_size=6 must be divisible by the 4 data shards"):
        pipeline.train_dataset(c, 0, 1)
    c.data.num_shards = 3
    with pytest.raises(ValueError, match="num_shards=3 must be a multiple of the 2 JAX processes"):
        pipeline.train_dataset(c, 0, 2)


def test_a_worker_waits_for_the_coordinator_port_before_dialling():
    """distributed.wait_for_coordinator: returns once the port listens (a worker started
    before process 0 then dials once, without gRPC's 1 s reconnect backoff), and gives up
    after its timeout when nothing listens."""
    from jaxsr import distributed
    import threading
    port = free_port()
    server = socket.socket()

    def listen_later():
        time.sleep(0.4)
        server.bind(("127.0.0.1", port))
        server.listen()

    opener = threading.Thread(target=listen_later)
    t0 = time.monotonic()
    opener.start()
    try:
        assert distributed.wait_for_coordinator(f"127.0.0.1:{port}", timeout_s=20)
        waited = time.monotonic() - t0
        assert 0.4 <= waited < 5, waited
    finally:
        opener.join()
        server.close()
    t0 = time.monotonic()
    assert not distributed.wait_for_coordinator(f"127.0.0.1:{free_port()}", timeout_s=0.3)
    assert 0.3 <= time.monotonic() - t0 < 5
