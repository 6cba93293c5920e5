"""`python -m jaxsr.upscale` and the Python API on a tiny EDSR workdir."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxsr import checkpoint, inference, metrics, models, upscale
from jaxsr.config_base import base_config
from test_inference import random_params


def _tiny_config(scale=2):
    c = base_config()
    c.scale = scale
    c.model.name = "edsr"
    c.model.n_resblocks = 2
    c.model.n_feats = 8
    c.model.res_scale = 1.0
    return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("edsr_tiny")
    config = _tiny_config()
    model = models.build_model(config)
    params = random_params(model)
    checkpoint.save_params(str(wd), params, config)
    return wd, model, params, config


def _reference_sr(model, params, rgb_uint8):
    """Independent of the Upscaler: one plain model.apply on the whole image."""
    sr = model.apply({"params": params}, jnp.asarray(rgb_uint8, jnp.float32)[None] / 255.0)
    return metrics.quantize(np.asarray(sr[0]))


def test_folder_with_corrupt_file_and_modes(workdir, tmp_path):
    wd, model, params, _ = workdir
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    rgb = rng.integers(0, 256, (40, 44, 3), np.uint8)
    gray = rng.integers(0, 256, (17, 13), np.uint8)
    rgba = np.concatenate([rgb[:16, :18], np.full((16, 18, 1), 255, np.uint8)], 2)
    Image.fromarray(rgb).save(src / "a_rgb.png")
    Image.fromarray(gray).save(src / "b_gray.png")
    Image.fromarray(rgba).save(src / "c_rgba.png")
    (src / "d_bad.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jaxsr.upscale", f"--workdir={wd}", f"--input={src}",
           f"--output={out}", "--tile=36", "--tile_overlap=32", "--config.eval.tile_batch=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    bad_key = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert bad_key.returncode != 0
    assert "eval.tile_batch" in bad_key.stderr and "eval.tile_overlap" in bad_key.stderr
    res = subprocess.run(cmd[:-1] + ["--config.eval.chop=false"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stderr
    assert "d_bad.png" in res.stderr and "3 of 4" in res.stdout
    assert sorted(os.listdir(out)) == ["a_rgb.png", "b_gray.png", "c_rgba.png"]
    got = np.asarray(Image.open(out / "a_rgb.png"))
    assert got.shape == (80, 88, 3)
    # overlap 32 covers the tiny EDSR's receptive field: tiled = whole (+-1 rounding level)
    assert np.abs(got.astype(int) - _reference_sr(model, params, rgb)).max() <= 1
    assert np.asarray(Image.open(out / "b_gray.png")).shape == (34, 26, 3)
    assert np.asarray(Image.open(out / "c_rgba.png")).shape == (32, 36, 3)


def test_python_api_matches_plain_apply(workdir):
    wd, model, params, _ = workdir
    img = np.random.default_rng(1).integers(0, 256, (18, 22, 3), np.uint8)
    sr = upscale.upscale(img, str(wd))
    np.testing.assert_array_equal(sr, _reference_sr(model, params, img))
    gray = upscale.upscale(img[:, :, 0], str(wd))   # grayscale -> RGB, like read_rgb
    np.testing.assert_array_equal(gray, _reference_sr(model, params,
                                                      np.repeat(img[:, :, :1], 3, 2)))


def test_overrides_are_typed_and_unknown_keys_list_valid_ones():
    c = _tiny_config()
    upscale.apply_overrides(c, ["eval.tile=64", "eval.chop=true", "eval.datasets=('Set5',)"])
    assert c.eval.tile == 64 and c.eval.chop is True and c.eval.datasets == ("Set5",)
    with pytest.raises(ValueError, match="valid keys:(.|\n)*model.n_feats"):
        upscale.apply_overrides(c, ["model.n_hash=2"])
    with pytest.raises(ValueError, match="eval.tile"):
        upscale.apply_overrides(c, ["eval.tile=big"])
    assert upscale.split_overrides(["--config.scale", "4", "--tile=8"]) == (["scale=4"],
                                                                            ["--tile=8"])
    assert upscale.parse_bytes("1.5G") == int(1.5 * 2**30) and upscale.parse_bytes("") is None


def test_compare_figure_with_bicubic(tmp_path):
    from jaxsr.tools import compare
    hr = np.random.default_rng(2).integers(0, 256, (40, 52, 3), np.uint8)
    hr[8:30, 10:40] = 255 * (np.indices((22, 30)).sum(0) % 2)[..., None]  # hard detail
    Image.fromarray(hr).save(tmp_path / "hr.png")
    out = tmp_path / "fig.png"
    assert compare.main(["--workdir", "bicubic", "--config.scale=2", "--image",
                         str(tmp_path / "hr.png"), "--output", str(out), "--size", "16"]) == 0
    assert out.stat().st_size > 0
    up = upscale.Upscaler.from_workdir("bicubic", ["scale=2"])
    titled, (y, x, size), _ = compare.panels(up, hr, None, 16, 8)
    assert size == 16 and 8 <= y <= 14 and 10 <= x <= 24  # inside the checkerboard
    assert [t.split("\n")[0] for t, _ in titled][1:] == ["bicubic", "bicubic (model)", "HR"]
    np.testing.assert_array_equal(titled[1][1], titled[2][1])  # bicubic model = bicubic
