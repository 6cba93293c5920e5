"""Blind test sets (Gaussian8, BD, DN, presets), DIV2KRK, crop sampling and the TFDS source."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jaxsr.data import blind_sets as B
from jaxsr.data import div2krk, images, sampling, tfds_source
from jaxsr.ops.imresize import imresize_np


def test_set_names():
    assert B.parse_name("Set5_gaussian8") == ("Set5", "gaussian8")
    assert B.parse_name("Set14_BD") == ("Set14", "bd")
    assert B.parse_name("Urban100_DN15") == ("Urban100", "dn15")
    assert B.parse_name("my_set_nlcunet_aniso") == ("my_set", "nlcunet_aniso")
    assert B.parse_name("div2krk") == ("DIV2KRK", "div2krk")
    for plain in ("Set5", "B100", "Set5_x2", "skimage_val"):
        assert B.parse_name(plain) is None and not B.is_blind_set(plain)
    with pytest.raises(KeyError, match="not a blind test set"):
        B.load_set("/nonexistent", "Set5", 2)
    np.testing.assert_allclose(B.gaussian8_sigmas(3), np.linspace(1.35, 2.40, 8))
    assert B.gaussian8_sigmas(4)[[0, -1]].tolist() == [1.8, 3.2]


def test_gaussian8_matches_a_scipy_reference(shared_data):
    ds = B.load_set(str(shared_data / "benchmarks"), "Set5_gaussian8", 4)
    assert len(ds) == 40
    name, hr, lr, extra = ds[8]                       # bird (288x288) with sigma 1.8
    assert name == "bird_k0" and extra["sigma"] == pytest.approx(1.8)
    assert hr.shape == (288, 288, 3) and lr.shape == (72, 72, 3) and lr.dtype == np.uint8
    g = np.exp(-np.arange(-10, 11) ** 2 / (2 * 1.8 ** 2))
    k = np.outer(g, g) / g.sum() ** 2                 # isotropic 21x21, DAN's formula
    np.testing.assert_allclose(extra["kernel"], k, atol=1e-12)
    blurred = ndimage.correlate(hr.astype(np.float64), k[..., None], mode="mirror")  # reflect
    ref = np.clip(np.floor(imresize_np(blurred, 0.25) + 0.5), 0, 255)
    diff = np.abs(lr.astype(np.float64) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert len(B.load_set(str(shared_data / "benchmarks"), "Set5_gaussian8", 4,
                          max_images=1)) == 8


def test_dn_sets_are_seeded_and_have_the_noise_level(shared_data):
    root = str(shared_data / "benchmarks")
    _, hr, lr, extra = B.load_set(root, "Set5_DN15", 2)[1]           # bird
    bicubic = images.read_rgb(str(shared_data / "benchmarks/Set5/LR_bicubic/X2/birdx2.png"))
    assert extra["noise_level"] == 15.0 and extra["kernel"] is None
    inside = (bicubic > 50) & (bicubic < 205)                        # away from clipping
    resid = (lr.astype(np.float64) - bicubic)[inside]
    assert inside.mean() > 0.5 and 14.5 < resid.std() < 15.5 and abs(resid.mean()) < 0.5
    again = B.load_set(root, "Set5_DN15", 2, max_images=2)[1][2]     # order-independent seed
    np.testing.assert_array_equal(again, lr)
    assert not np.array_equal(B.load_set(root, "Set5_DN15", 2, seed=1)[1][2], lr)


def test_write_set_and_read_it_back(shared_data, tmp_path):
    root = str(shared_data / "benchmarks")
    for name, scale, n in (("Set5_BD", 3, 1), ("Set5_kair", 4, 2)):
        folder = B.write_set(root, name, scale, str(tmp_path), max_images=n)
        man = json.load(open(os.path.join(folder, "manifest.json")))
        assert man["scale"] == scale and len(man["images"]) == n
        fresh = B.load_set(root, name, scale, max_images=n)
        back = B.load_set(root, name, scale, generated_dir=str(tmp_path))
        assert len(back) == n
        for (n1, hr1, lr1, e1), (n2, hr2, lr2, e2) in zip(fresh, back):
            assert n1 == n2 and e1.get("seed") == e2.get("seed")
            np.testing.assert_array_equal(hr1, hr2)
            np.testing.assert_array_equal(lr1, lr2)
            np.testing.assert_allclose(e1["kernel"], e2["kernel"])
            assert e1.get("noise_level") == e2.get("noise_level")
    assert back[0][3]["seed"] != back[1][3]["seed"]                    # kair: one seed per image
    assert "noise_level" in back[0][3] and back[0][3]["kernel"].shape == (25, 25)
    with pytest.raises(ValueError, match="DIV2KRK"):
        B.write_set(root, "DIV2KRK", 4, str(tmp_path))


def test_div2krk(shared_data):
    root = str(shared_data / "benchmarks/DIV2KRK")
    ds = B.load_set(str(shared_data / "benchmarks"), "DIV2KRK", 4)
    name, hr, lr, extra = ds[0]
    assert name == "im_43" and lr.shape[2] == 3                          # RGBA -> RGB
    assert hr.shape == (lr.shape[0] * 4, lr.shape[1] * 4, 3)
    assert extra["kernel"].shape == (31, 31) and abs(extra["kernel"].sum() - 1) < 1e-6
    e2 = div2krk.entries(root, 2)
    assert [e["name"] for e in e2] == ["im_43", "im_68"]
    assert div2krk.read_kernel(e2[0]["kernel"]).shape == (11, 11)
    with pytest.raises(ValueError, match="scales"):
        div2krk.entries(root, 3)


def test_crop_hr_modes():
    rows, cols = np.meshgrid(np.arange(40), np.arange(60), indexing="ij")
    img = np.stack([rows, cols, rows + cols], -1).astype(np.uint8)   # pixel = its position
    rng = np.random.default_rng(0)
    tops = set()
    for _ in range(50):
        c = sampling.crop_hr(img, rng, 8, "center_random", center_size=16)
        assert c.shape == (8, 8, 3)
        # the crop lies inside the central 16x16 box (rows 12..27, cols 22..37)
        r0, c0 = c[0, 0, 0], c[0, 0, 1]
        assert 12 <= r0 <= 20 and 22 <= c0 <= 30
        tops.add(int(r0))
    assert len(tops) > 3
    a = sampling.crop_hr(img, np.random.default_rng(3), 8)
    np.testing.assert_array_equal(a, sampling.crop_hr(img, np.random.default_rng(3), 8))
    assert sampling.crop_hr(img, rng, 40, "center_random", 512).shape == (40, 40, 3)
    with pytest.raises(ValueError, match="config.data.crop"):
        sampling.crop_hr(img, rng, 8, "centre")
    with pytest.raises(ValueError, match="patch_size"):
        sampling.crop_hr(img, rng, 64)
    with pytest.raises(ValueError, match="center_size"):
        sampling.crop_hr(img, rng, 16, "center_random", center_size=8)


class _StubDataSource:
    """The interface of tfds.data_source(...)[split]: len + getitem -> feature dict."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def test_tfds_source_with_a_stub_and_grain():
    import grain
    rng = np.random.default_rng(0)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(png, "PNG")
    examples = [{"hr": rng.integers(0, 256, (32, 40, 3), dtype=np.uint8), "lr": None},
                {"hr": rng.integers(0, 256, (30, 30), dtype=np.uint8)},     # grayscale
                {"hr": png.getvalue()}]                                      # encoded bytes
    src = tfds_source.TfdsHRSource(_StubDataSource(examples), "hr", name="div2k:train")
    assert len(src) == 3 and src[1].shape == (30, 30, 3) and src[2].shape == (20, 24, 3)
    np.testing.assert_array_equal(src[0], examples[0]["hr"])
    ds = (grain.MapDataset.source(src).seed(0)
          .random_map(lambda img, r: sampling.crop_hr(img, r, 16)).batch(3))
    assert ds[0].shape == (3, 16, 16, 3) and ds[0].dtype == np.uint8
    with pytest.raises(KeyError, match="tfds_image_key"):
        tfds_source.TfdsHRSource(_StubDataSource(examples), "image")[0]


def test_tfds_missing_or_unnamed_gives_clear_errors():
    with pytest.raises(ValueError, match="tfds_name"):
        tfds_source.open_source("")
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
            tfds_source.open_source("div2k/bicubic_x2")


def test_make_lr_cli_writes_blind_sets(shared_data, tmp_path):
    from jaxsr.tools import make_lr
    bench = str(shared_data / "benchmarks")
    assert make_lr.main(["--blind_set", "Set5_BD", "--scale", "2", "--out", str(tmp_path),
                         "--benchmarks", bench]) == 0
    man = json.load(open(tmp_path / "Set5_BD/X2/manifest.json"))
    assert len(man["images"]) == 5 and man["spec"]["kernel_size"] == 7
    assert make_lr.main(["--blind_set", "Set5", "--scale", "2", "--out", str(tmp_path),
                         "--benchmarks", bench]) == 2
