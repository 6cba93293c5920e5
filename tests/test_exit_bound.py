"""A finished command ends within its bound although a data reader never returns
(jaxsr.exit_bound): a tiny training over an image folder whose next read blocks forever
(tests/blocking_images.py, a FIFO nobody writes), then `--exit_timeout` seconds.

Without the bound the process never exits: interpreter shutdown joins Grain's prefetch
thread, which waits in open() on the FIFO (the same wait as an ArrayRecord read from a
storage server that stopped answering).
"""
import os
import subprocess
import sys
import time

import pytest

from jaxsr import checkpoint, config_util
from tests import blocking_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 180
EXIT_TIMEOUT_S = 2
# The final save (synchronous), closing the run, the bound, a loaded 2-core machine's slack.
BOUND_S = EXIT_TIMEOUT_S + 15
STEPS = 2
TINY = {"model.n_resblocks": 2, "model.n_feats": 8, "model.scan_blocks": "false",
        "data.source": "folders", "data.num_threads": 1, "data.num_shards": 1,
        "train.batch_size": 8, "train.patch_size": 32, "train.log_every": 1,
        "train.checkpoint_every": 3, "train.async_checkpoints": False}


def tiny_config(folder, settings):
    config = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    for key, value in settings.items():
        group, name = key.split(".")
        config[group][name] = value
    config.data.train_dirs = (folder,)
    return config


def command(workdir, folder, settings, extra=()):
    flags = [f"--config.{k}={v}" for k, v in settings.items()]
    return [sys.executable, "-m", "jaxsr.main", "--config", "configs/edsr.py:small",
            "--workdir", str(workdir), f"--config.data.train_dirs=('{folder}',)",
            *flags, *extra]


STARTED = "training images: "      # logged after the start-up checks read every image


def run_until(cmd, env, log, marker, fifo):
    """Runs `cmd` to its end, stopping `fifo`'s feed once the start-up checks are done;
    -> (exit code, seconds from `marker` in the log to the exit)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline, seen = time.monotonic() + DEADLINE_S, None
        while proc.poll() is None and time.monotonic() < deadline:
            text = log.read_text()
            if not fifo._stop.is_set() and STARTED in text:
                fifo.stop()
            if seen is None and marker in text:
                seen = time.monotonic()
            time.sleep(0.02)
        code = proc.wait(timeout=1)
        return code, time.monotonic() - (seen or time.monotonic())
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {DEADLINE_S} s: {log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)


def test_training_ends_within_the_bound_while_a_reader_blocks_forever(tmp_path, xla_cache_env):
    folder = blocking_images.make_folder(tmp_path / "hr")
    settings = {**TINY, "train.num_steps": STEPS}
    batch = TINY["train.batch_size"]
    # Step STEPS has pulled STEPS + 1 batches (one ahead); the next sample blocks.
    fifo = blocking_images.block_at(folder, tiny_config(folder, settings), (STEPS + 1) * batch)
    log = tmp_path / "train.log"
    try:
        code, seconds = run_until(command(tmp_path / "run", folder, settings,
                                          [f"--exit_timeout={EXIT_TIMEOUT_S}"]),
                                  xla_cache_env, log, f"step {STEPS}:", fifo)
    finally:
        fifo.stop()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert fifo.served >= 1                     # the start-up check read the FIFO
    assert checkpoint.latest_step(str(tmp_path / "run")) == STEPS   # the work is done
    assert f"grain-prefetch_0 still running {EXIT_TIMEOUT_S:g} s later" in text, text[-3000:]
    assert seconds < BOUND_S, f"{seconds:.1f} s after step {STEPS}: {text[-3000:]}"
    print(f"exited {code} {seconds:.1f} s after step {STEPS} (--exit_timeout={EXIT_TIMEOUT_S})")
