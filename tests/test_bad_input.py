"""Bad input gets a clear message naming the file/key, never a bare traceback."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxsr import config_util
from jaxsr.data import benchmarks, images, pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(path, arr, mode=None):
    Image.fromarray(arr, mode=mode).save(path)


def test_modes_become_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgba = np.dstack([np.full((3, 4, 3), 7, np.uint8), np.full((3, 4), 9, np.uint8)])
    _save(tmp_path / "g.png", gray)
    _save(tmp_path / "a.png", rgba)
    g = images.read_rgb(str(tmp_path / "g.png"))
    a = images.read_rgb(str(tmp_path / "a.png"))
    assert g.shape == (3, 4, 3) and (g[..., 0] == gray).all() and (g[..., 2] == gray).all()
    assert a.shape == (3, 4, 3) and (a == 7).all()


def test_corrupt_image_error_names_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(images.ImageReadError, match="broken.png"):
        images.read_rgb(str(bad))


def test_training_skips_unreadable_and_small_images(tmp_path, caplog):
    rng = np.random.default_rng(0)
    _save(tmp_path / "good.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    _save(tmp_path / "small.png", rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.data.train_dirs = (str(tmp_path),)
    c.train.patch_size = 32
    with caplog.at_level(logging.WARNING):
        paths = pipeline.train_paths(c)
    assert [os.path.basename(p) for p in paths] == ["good.png"]
    assert "bad.png" in caplog.text and "small.png" in caplog.text


def test_truncated_file_is_skipped_during_iteration(tmp_path, caplog):
    rng = np.random.default_rng(0)
    _save(tmp_path / "ok.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    _save(tmp_path / "cut.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])   # header fine, pixels not
    reader = pipeline.ImageReader([str(tmp_path / "cut.png"), str(tmp_path / "ok.png")], cache=False)
    load = pipeline.LoadCrop(reader, 32, "random", 512, True)
    with caplog.at_level(logging.WARNING):
        assert load.random_map(0, np.random.default_rng(0)) is None
        assert load.random_map(1, np.random.default_rng(0))["hr"].shape == (32, 32, 3)
    assert "cut.png" in caplog.text


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.data.train_dirs.*no images"):
        images.list_image_dirs((str(tmp_path),))
    with pytest.raises(FileNotFoundError, match="does not exist.*nowhere"):
        images.list_image_dirs((str(tmp_path / "nowhere"),))
    with pytest.raises(ValueError, match="config.data.train_dirs is empty"):
        images.list_image_dirs(())


def test_unknown_benchmark_set_lists_available(tmp_path):
    (tmp_path / "Set5" / "HR").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="'Set6' not found.*has: Set5"):
        benchmarks.load_set(str(tmp_path), "Set6", 2)


def test_lr_file_of_wrong_size_is_named(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "S" / "HR").mkdir(parents=True)
    (tmp_path / "S" / "LR_bicubic" / "X2").mkdir(parents=True)
    _save(tmp_path / "S" / "HR" / "a.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    _save(tmp_path / "S" / "LR_bicubic" / "X2" / "ax2.png",
          rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="ax2.png"):
        benchmarks.load_set(str(tmp_path), "S", 2)


def test_cli_unknown_key_and_clean_errors(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "jaxsr.main", *args], cwd=REPO,
                              capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                              timeout=300)
    r = run("--config", "configs/edsr.py:small", "--workdir", str(tmp_path), "--config.train.nope=1")
    assert r.returncode != 0 and "unknown config key(s): train.nope" in r.stderr
    assert "train.num_steps" in r.stderr                     # lists the valid keys
    r = run("--config", "configs/edsr.py:small", "--workdir", str(tmp_path / "empty"),
            "--mode", "evaluate")
    assert r.returncode != 0 and "no checkpoints in" in r.stderr
    assert "Traceback" not in r.stderr
