"""Fault injection against training, black-box: `python -m jaxsr.main --mode train` (or a
small driver calling `jaxsr.run.run`) in subprocesses, with real signals and real files.

One uninterrupted reference run keeps a checkpoint of every step; each fault run is then
compared with it bit for bit. docs/reliability.md lists these faults and what is kept.
All runs share a persistent XLA compilation cache so that only the first one compiles.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from jaxsr import checkpoint, config_util, objectives
from tests import fast_compile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 16                     # steps of the reference run
TINY = {"model.n_resblocks": 2, "model.n_feats": 8, "data.source": "skimage",
        "train.patch_size": 32, "train.batch_size": 4, "train.log_every": 1,
        "train.async_checkpoints": False}
TIMEOUT = 240              # seconds any one subprocess may take (killed after)


def overrides(**more) -> list[str]:
    items = {**TINY, **{k.replace("__", "."): v for k, v in more.items()}}
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture(scope="module")
def env(xla_cache_env):
    return fast_compile.subprocess_env({**xla_cache_env, "JAXSR_TRACEBACK": ""})


def train_cmd(workdir, items) -> list[str]:
    return ([sys.executable, "-m", "jaxsr.main", "--config", "configs/edsr.py:small",
             "--workdir", str(workdir), "--mode", "train"] + [f"--config.{i}" for i in items])


def run_train(env, workdir, items, expect_rc=0):
    out = subprocess.run(train_cmd(workdir, items), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert out.returncode == expect_rc, out.stderr[-3000:]
    return out


def start_train(env, workdir, items) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(workdir, items), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until(proc, ready, what: str, timeout: float = TIMEOUT):
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}: "
                                 f"{proc.communicate(timeout=30)[1][-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            proc.communicate(timeout=30)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def metric_lines(workdir) -> list[str]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    return [ln for ln in open(path).read().splitlines() if ln.strip()]


def logged_step(workdir, after_line: int = 0) -> int:
    """The last step logged in metrics.jsonl by lines after the first `after_line` (a
    resumed run appends; lines of the run before must not count)."""
    lines = metric_lines(workdir)[after_line:]
    return json.loads(lines[-1])["step"] if lines else 0


def run_driver(driver: str, workdir, arg, env, *, keep: int):
    """A fault-injecting driver script on the tiny run (N steps, a checkpoint each step)."""
    return subprocess.run(
        [sys.executable, "-c", driver, str(workdir), str(arg)]
        + overrides(train__num_steps=N, train__checkpoint_every=1, train__keep_checkpoints=keep),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def committed_steps(workdir) -> list[int]:
    d = checkpoint.checkpoint_dir(str(workdir))
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def params_at(workdir, step=None):
    params, meta = checkpoint.load_params(str(workdir), step)
    return jax.tree_util.tree_flatten_with_path(params)[0], meta


def assert_same_params(a_dir, a_step, b_dir, b_step):
    (a, meta_a), (b, _) = params_at(a_dir, a_step), params_at(b_dir, b_step)
    assert [k for k, _ in a] == [k for k, _ in b]
    for (key, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(key))
    return meta_a


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """An uninterrupted run of N steps with a checkpoint of every step."""
    wd = tmp_path_factory.mktemp("reference") / "wd"
    run_train(env, wd, overrides(train__num_steps=N, train__checkpoint_every=1,
                                 train__keep_checkpoints=100))
    assert committed_steps(wd) == list(range(1, N + 1))
    return wd


def _stop(proc, sig, ready, what):
    try:
        wait_until(proc, ready, what)
        proc.send_signal(sig)
        return proc.communicate(timeout=TIMEOUT)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_sigkill_mid_async_save_then_sigterm_then_resume_bit_identical(env, reference,
                                                                        tmp_path):
    wd = tmp_path / "wd"
    # 1. SIGKILL while asynchronous saves (one per step) are in flight.
    proc = start_train(env, wd, overrides(train__num_steps=1000, train__checkpoint_every=1,
                                          train__keep_checkpoints=100,
                                          train__async_checkpoints=True))
    _stop(proc, signal.SIGKILL, lambda: len(committed_steps(wd)) >= 3, "3 checkpoints")
    latest = checkpoint.latest_step(str(wd))
    assert latest == committed_steps(wd)[-1] and latest < N - 6
    # Whatever the kill left half-written is not a step; the latest one is complete.
    assert_same_params(wd, latest, reference, latest)
    # 2. The next run resumes from it; SIGTERM: the step in flight is checkpointed, exit 0.
    earlier_lines = len(metric_lines(wd))         # the killed run logged past `latest`
    proc = start_train(env, wd, overrides(train__num_steps=1000, train__checkpoint_every=1000))
    err = _stop(proc, signal.SIGTERM, lambda: logged_step(wd, earlier_lines) >= latest + 2,
                f"step {latest + 2}")
    assert proc.returncode == 0, err[-3000:]
    new = [s for s in committed_steps(wd) if s > latest]
    assert len(new) == 1 and new[0] < N, new               # only the SIGTERM checkpoint
    assert_same_params(wd, new[0], reference, new[0])
    # 3. Rerun to the end: exactly the uninterrupted parameters.
    run_train(env, wd, overrides(train__num_steps=N, train__checkpoint_every=1000))
    assert committed_steps(wd)[-1] == N
    assert_same_params(wd, N, reference, N)


NAN_DRIVER = textwrap.dedent('''
    import sys
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    import jax.numpy as jnp
    from jaxsr import config_util, objectives, run, upscale
    from jaxsr.objectives import sr

    workdir, bad_step, *items = sys.argv[1:]
    seen = {}
    original_step, original_loss = sr.SRObjective.train_step, objectives.pixel_loss

    def train_step(self, state, hr, rng):
        seen["step"] = state["step"]          # traced: the step being taken, 0-based
        return original_step(self, state, hr, rng)

    def pixel_loss(name, out, hr):            # NaN from step `bad_step` (1-based) on
        loss = original_loss(name, out, hr)
        return jnp.where(seen["step"] + 1 >= int(bad_step), jnp.nan, loss)

    sr.SRObjective.train_step, objectives.pixel_loss = train_step, pixel_loss
    config = config_util.load_config_file("configs/edsr.py:small")
    run.run("train", upscale.apply_overrides(config, items), workdir)
''')


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(env, reference,
                                                                    tmp_path):
    wd, bad = tmp_path / "wd", 6
    out = run_driver(NAN_DRIVER, wd, bad, env, keep=3)
    assert out.returncode != 0
    assert "non-finite" in out.stderr, out.stderr[-3000:]
    # keep_checkpoints=3: only the last three good steps are left, none at or after `bad`.
    assert committed_steps(wd) == [bad - 3, bad - 2, bad - 1]
    assert_same_params(wd, bad - 1, reference, bad - 1)


DISK_FULL_DRIVER = textwrap.dedent('''
    import resource, signal, sys
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    from jaxsr import checkpoint, config_util, run, upscale

    workdir, fail_at, *items = sys.argv[1:]
    calls, original = [0], checkpoint.save

    def save(*args, **kw):                    # from the fail_at-th save on, files stop
        calls[0] += 1                         # growing past 4 KiB: a full disk
        if calls[0] == int(fail_at):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        return original(*args, **kw)

    checkpoint.save = save
    config = config_util.load_config_file("configs/edsr.py:small")
    run.run("train", upscale.apply_overrides(config, items), workdir)
''')


def test_write_error_during_save_keeps_previous_checkpoint(env, reference, tmp_path):
    wd, fail_at = tmp_path / "wd", 3
    out = run_driver(DISK_FULL_DRIVER, wd, fail_at, env, keep=100)
    assert out.returncode != 0
    assert f"checkpoint step {fail_at}" in out.stderr, out.stderr[-3000:]
    assert committed_steps(wd) == list(range(1, fail_at))
    assert checkpoint.latest_step(str(wd)) == fail_at - 1
    assert_same_params(wd, fail_at - 1, reference, fail_at - 1)


def _flat_shapes(workdir):
    return {jax.tree_util.keystr(k): np.shape(v) for k, v in params_at(workdir)[0]}


def test_init_from_loads_skips_and_reports_exactly(env, reference, tmp_path):
    wd = tmp_path / "x3"
    out = run_train(env, wd, overrides(scale=3, train__patch_size=48, train__num_steps=1,
                                       train__lr=0.0, init_from=reference))
    source, new = dict(params_at(reference)[0]), dict(params_at(wd)[0])
    src = {jax.tree_util.keystr(k): v for k, v in source.items()}
    dst = {jax.tree_util.keystr(k): v for k, v in new.items()}
    same = sorted(k for k in dst if k in src and np.shape(src[k]) == np.shape(dst[k]))
    other = sorted(k for k in dst if k in src and np.shape(src[k]) != np.shape(dst[k]))
    assert other and same and set(src) == set(dst)     # x2 -> x3: the upsampler differs
    log = out.stderr
    assert re.search(rf"init_from \S+: loaded {len(same)} tensors", log), log[-3000:]
    reported = re.search(r"skipped_shape \((\d+)\): (.*)", log)
    assert reported and int(reported.group(1)) == len(other)
    assert sorted(re.findall(r"(\S+): checkpoint \(", reported.group(2))) == other
    assert "missing (" not in log and "unexpected (" not in log
    for k in same:              # lr 0: the one step leaves the loaded values exactly as read
        np.testing.assert_array_equal(dst[k], src[k], err_msg=k)


def test_step_schedule_values_at_milestones():
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.train.schedule, c.train.lr, c.train.lr_gamma = "step", 2e-4, 0.5
    c.train.lr_milestones, c.train.warmup_steps = (5, 10, 10, 15), 0
    schedule = objectives.lr_schedule(c.train)
    for step in (0, 4, 5, 6, 9, 10, 11, 14, 15, 16, 100):
        passed = sum(m <= step for m in c.train.lr_milestones)
        np.testing.assert_allclose(float(schedule(step)), 2e-4 * 0.5 ** passed, rtol=1e-6,
                                   err_msg=f"step {step}")


def test_damaged_latest_checkpoint_is_named_with_the_step_to_fall_back_to(reference, tmp_path):
    from jaxsr import run
    wd = tmp_path / "wd"
    shutil.copytree(reference, wd)
    state = os.path.join(checkpoint.checkpoint_dir(str(wd)), str(N), "state")
    for root, _, files in os.walk(state):
        for f in files:
            path = os.path.join(root, f)
            if os.path.getsize(path) > 1024:
                os.truncate(path, 100)
    with pytest.raises(checkpoint.DamagedCheckpointError) as e:
        checkpoint.load_params(str(wd))
    msg = str(e.value)
    assert f"checkpoint step {N}" in msg and os.path.join(str(wd), "checkpoints", str(N)) in msg
    assert f"--step={N - 1}" in msg
    # The message is what `--mode evaluate` prints (one line, exit status 1) ...
    config = checkpoint.load_config(str(wd))
    with pytest.raises(SystemExit) as exit_:
        run.run("evaluate", config, str(wd))
    assert f"--step={N - 1}" in str(exit_.value.code)
    # ... and the fallback it names works.
    assert_same_params(wd, N - 1, reference, N - 1)


def _state_dict_file(reference, tmp_path):
    from jaxsr import convert
    config = checkpoint.load_config(str(reference))
    params, _ = checkpoint.load_params(str(reference))
    path = str(tmp_path / "x.pth")
    convert.save_state_dict(convert.params_to_state_dict(params, config), path)
    return config, path


def _snapshot(workdir):
    files = {}
    for root, _, names in os.walk(workdir):
        for n in names:
            p = os.path.join(root, n)
            files[os.path.relpath(p, workdir)] = open(p, "rb").read()
    return files


def test_convert_into_existing_run_keeps_every_checkpoint(reference, tmp_path):
    from jaxsr import convert
    wd = tmp_path / "run"
    shutil.copytree(reference, wd)
    config, pth = _state_dict_file(reference, tmp_path)
    before = _snapshot(wd)
    with pytest.raises(FileExistsError, match="--force"):
        convert.import_file(config, pth, str(wd))
    assert _snapshot(wd) == before                      # nothing written, nothing removed
    summary = convert.import_file(config, pth, str(wd), force=True)
    assert summary["checkpoint"] == os.path.join(str(wd), "converted", "x", "checkpoints", "0")
    after = _snapshot(wd)
    assert {k: v for k, v in after.items() if k in before} == before
    assert committed_steps(wd) == list(range(1, N + 1))
    assert_same_params(wd / "converted" / "x", 0, reference, N)
    # A second --force adds another folder; the first is kept.
    convert.import_file(config, pth, str(wd), force=True)
    assert committed_steps(wd / "converted" / "x_2") == [0]
    # save_params (also used by jaxsr.models.blind) adds a step and keeps every other one.
    params, _ = checkpoint.load_params(str(reference))
    checkpoint.save_params(str(wd), params, config, step=1000)
    assert committed_steps(wd) == list(range(1, N + 1)) + [1000]
