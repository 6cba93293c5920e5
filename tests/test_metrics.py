"""PSNR/SSIM (BasicSR protocol) against literal implementations, skimage and known values;
the bicubic model reproduces the bicubic rows of ../shared/data/README.md."""
import math
import os

import jax
import numpy as np
import pytest

from jaxsr import metrics, models
from jaxsr.config_base import base_config
from jaxsr.ops import imresize_np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _literal_y(img):
    h, w, _ = img.shape
    y = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            r, g, b = (float(v) for v in img[i, j])
            y[i, j] = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    return y


def _literal_ssim(a, b):
    """Direct windowed SSIM: every 11x11 window fully inside the image."""
    g = [math.exp(-((k - 5) ** 2) / (2 * 1.5 ** 2)) for k in range(11)]
    win = np.outer(g, g) / np.sum(np.outer(g, g))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va = (win * pa * pa).sum() - ma * ma
            vb = (win * pb * pb).sum() - mb * mb
            cov = (win * pa * pb).sum() - ma * mb
            vals.append((2 * ma * mb + c1) * (2 * cov + c2)
                        / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(vals))


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (24, 21, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-12, 13, hr.shape), 0, 255).astype(np.uint8)
    return sr, hr


def test_psnr_y_matches_literal(pair):
    sr, hr = pair
    c = 3
    ya, yb = _literal_y(sr)[c:-c, c:-c], _literal_y(hr)[c:-c, c:-c]
    ref = 10 * math.log10(255 ** 2 / np.mean((ya - yb) ** 2))
    assert metrics.calculate_psnr(sr, hr, crop_border=c, test_y_channel=True) == \
        pytest.approx(ref, abs=1e-10)
    np.testing.assert_allclose(metrics.rgb_to_y(hr), _literal_y(hr), atol=1e-12)
    ref_rgb = 10 * math.log10(255 ** 2 / np.mean((sr.astype(float) - hr) ** 2))
    assert metrics.calculate_psnr(sr, hr) == pytest.approx(ref_rgb, abs=1e-10)


def test_psnr_known_values():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert metrics.calculate_psnr(a, a) == float("inf")
    assert metrics.calculate_psnr(a + 1, a) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-9)
    # +1 on R, G and B moves Y by 219/255.
    assert metrics.calculate_psnr(a + 1, a, test_y_channel=True) == \
        pytest.approx(20 * math.log10(255 * 255 / 219), abs=1e-9)


def test_round_y_option(pair):
    sr, hr = pair
    ya, yb = np.round(_literal_y(sr)), np.round(_literal_y(hr))
    ref = 10 * math.log10(255 ** 2 / np.mean((ya - yb) ** 2))
    got = metrics.calculate_psnr(sr, hr, test_y_channel=True, round_y=True)
    assert got == pytest.approx(ref, abs=1e-10)
    assert got != metrics.calculate_psnr(sr, hr, test_y_channel=True)


def test_ssim_matches_literal_and_skimage(pair):
    sr, hr = pair
    ref = _literal_ssim(_literal_y(sr)[2:-2, 2:-2], _literal_y(hr)[2:-2, 2:-2])
    got = metrics.calculate_ssim(sr, hr, crop_border=2, test_y_channel=True)
    assert got == pytest.approx(ref, abs=1e-12)
    ref_rgb = np.mean([_literal_ssim(sr[..., c].astype(float), hr[..., c].astype(float))
                       for c in range(3)])
    assert metrics.calculate_ssim(sr, hr) == pytest.approx(ref_rgb, abs=1e-12)
    assert metrics.calculate_ssim(hr, hr, test_y_channel=True) == pytest.approx(1.0)
    skm = pytest.importorskip("skimage.metrics")
    sk = skm.structural_similarity(metrics.rgb_to_y(sr), metrics.rgb_to_y(hr), data_range=255,
                                   gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False)
    assert metrics.calculate_ssim(sr, hr, test_y_channel=True) == pytest.approx(sk, abs=1e-9)


def test_grayscale_ground_truth(pair):
    """A single-channel ground truth is compared without the Y transform (MATLAB rule);
    an RGB partner becomes full-range luma, which equals the channel when R = G = B."""
    sr, hr = pair
    g_sr, g_hr = sr[..., 0], hr[..., 0]
    direct = 10 * math.log10(255 ** 2 / np.mean((g_sr.astype(float) - g_hr) ** 2))
    rgb_sr = np.repeat(g_sr[..., None], 3, axis=2)
    assert metrics.calculate_psnr(rgb_sr, g_hr, test_y_channel=True) == \
        pytest.approx(direct, abs=1e-9)
    assert metrics.calculate_psnr(g_sr, g_hr, test_y_channel=True) == \
        pytest.approx(direct, abs=1e-9)
    as_y = metrics.calculate_psnr(rgb_sr, np.repeat(g_hr[..., None], 3, 2), test_y_channel=True)
    assert as_y - direct == pytest.approx(20 * math.log10(255 / 219), abs=1e-9)
    assert metrics.calculate_ssim(rgb_sr, g_hr[..., None]) == \
        pytest.approx(_literal_ssim(g_sr.astype(float), g_hr.astype(float)), abs=1e-12)


def test_quantize_and_errors():
    q = metrics.quantize(np.array([-0.2, 0.0, 0.4 / 255, 0.6 / 255, 200.0 / 255, 1.3]))
    np.testing.assert_array_equal(q, [0, 0, 0, 1, 200, 255])
    assert q.dtype == np.uint8
    a = np.zeros((12, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="differ"):
        metrics.calculate_psnr(a, a[:-1])
    with pytest.raises(ValueError, match="crop_border"):
        metrics.calculate_psnr(a, a, crop_border=6)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.calculate_ssim(a, a, crop_border=1)


# ---------------------------------------------------------------------------------------
# Acceptance: bicubic rows of ../shared/data/README.md (PSNR 0.01 dB, SSIM 0.001).

README_BICUBIC = {
    ("Set5", 2): (33.67, .9303), ("Set5", 3): (30.40, .8689), ("Set5", 4): (28.43, .8111),
    ("Set14", 2): (30.23, .8691), ("Set14", 3): (27.54, .7745), ("Set14", 4): (25.99, .7029),
    ("B100", 4): (25.96, .6681),
}


def _bicubic_scores(benchmarks_dir: str, name: str, scale: int):
    """Mean (PSNR_Y, SSIM_Y) of `configs/bicubic.py` through the evaluate-mode code path."""
    from jaxsr import config_util, evaluate
    config = config_util.load_config_file(os.path.join(REPO, "configs", "bicubic.py"))
    config.scale = scale
    config.eval.benchmarks_dir = benchmarks_dir
    model, params = evaluate.load_model_params(config, "")
    result = evaluate.evaluate_set(config, evaluate.make_apply_fn(model, params), name)
    return result["psnr_y"], result["ssim_y"]


@pytest.mark.parametrize("name,scale", sorted(README_BICUBIC))
def test_bicubic_table(shared_data, name, scale):
    psnr, ssim = _bicubic_scores(str(shared_data / "benchmarks"), name, scale)
    ref_psnr, ref_ssim = README_BICUBIC[(name, scale)]
    assert abs(psnr - ref_psnr) <= 0.01, (name, scale, psnr)
    assert abs(ssim - ref_ssim) <= 0.001, (name, scale, ssim)


def test_bicubic_model_equals_numpy_matlab_upscale():
    """uint8 round trip of the model == MATLAB imresize on uint8 (float64 NumPy path)."""
    rng = np.random.default_rng(5)
    lr = rng.integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
    config = base_config()
    config.scale, config.model.name = 3, "bicubic"
    model = models.build_model(config)
    assert model.init(jax.random.key(0), lr[:1] / 255.0) == {}
    sr = metrics.quantize(model.apply({}, lr.astype(np.float32) / 255.0))
    np.testing.assert_array_equal(sr, imresize_np(lr, 3.0))
