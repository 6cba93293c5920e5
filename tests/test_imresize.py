"""MATLAB bicubic imresize: shipped LR files, a literal per-pixel reference, PyTorch's
antialiased bicubic (interior), jit/vmap, and the make_lr tool."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxsr.data.images import modcrop, read_rgb
from jaxsr.ops import imresize, imresize_jit, imresize_np
from jaxsr.tools import make_lr


# ---------------------------------------------------------------------------------------
# Literal transcription of MATLAB's imresize (one output pixel at a time), written from
# the algorithm description, independent of jaxsr.ops.imresize.

def _ref_cubic(d):
    d = abs(d)
    if d <= 1:
        return 1.5 * d ** 3 - 2.5 * d ** 2 + 1
    if d <= 2:
        return -0.5 * d ** 3 + 2.5 * d ** 2 - 4 * d + 2
    return 0.0


def _ref_mirror(i, n):          # 0-based index, symmetric padding (edge repeated)
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - 1 - i
    return i


def _ref_resize_1d(signal, out_len, scale):
    n = len(signal)
    width = 4.0 / scale if scale < 1 else 4.0
    out = np.zeros(out_len)
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        acc, total = 0.0, 0.0
        for k in range(math.ceil(width) + 2):
            j = left + k                                   # 1-based tap
            d = u - j
            w = scale * _ref_cubic(scale * d) if scale < 1 else _ref_cubic(d)
            acc += w * signal[_ref_mirror(j - 1, n)]
            total += w
        out[x - 1] = acc / total
    return out


def _ref_imresize(img, out_hw, scales=None, uint8=False):
    """img HxWxC float64; scales default to out/in per axis; smaller scale first."""
    img = np.asarray(img, np.float64)
    scales = scales or [out_hw[0] / img.shape[0], out_hw[1] / img.shape[1]]
    for axis in sorted(range(2), key=lambda a: scales[a]):
        moved = np.moveaxis(img, axis, 0)
        res = np.zeros((out_hw[axis],) + moved.shape[1:])
        for idx in np.ndindex(*moved.shape[1:]):
            res[(slice(None),) + idx] = _ref_resize_1d(moved[(slice(None),) + idx],
                                                       out_hw[axis], scales[axis])
        img = np.moveaxis(res, 0, axis)
        if uint8:
            img = np.where(img < 0, -np.floor(-img + 0.5), np.floor(img + 0.5)).clip(0, 255)
    return img


# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_hw,scale,out_hw", [
    ((13, 11), 0.37, (5, 5)),          # non-integer downscale: ceil(4.81), ceil(4.07)
    ((12, 9), 1 / 3, (4, 3)),
    ((7, 6), 1.6, (12, 10)),           # non-integer upscale: ceil(11.2), ceil(9.6)
    ((5, 4), 3, (15, 12)),
    ((10, 8), 0.5, (5, 4)),
])
def test_float_matches_literal_reference(in_hw, scale, out_hw):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, in_hw + (2,))
    ref = _ref_imresize(img, out_hw, (scale, scale))
    got_np = imresize_np(img, scale)
    got_jax = np.asarray(imresize(jnp.asarray(img, jnp.float32), scale))
    assert got_np.shape == got_jax.shape == out_hw + (2,)
    np.testing.assert_allclose(got_np, ref, atol=1e-12)
    np.testing.assert_allclose(got_jax, ref, atol=2e-6)


def test_output_shape_with_unequal_scales_uint8_reference():
    """Explicit output shape: per-axis scales, smaller one first, rounding after each pass
    (the pass order matters with uint8 rounding)."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (9, 14, 3), dtype=np.uint8)
    ref = _ref_imresize(img.astype(np.float64), (7, 5), uint8=True).astype(np.uint8)
    np.testing.assert_array_equal(imresize_np(img, output_shape=(7, 5)), ref)
    got = imresize_jit(img, output_shape=(7, 5))
    assert got.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(got), ref)


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 0.25, 2.0, 3.0, 1.5])
def test_uint8_float01_and_numpy_paths_agree(scale):
    """uint8 in (JAX, float32), [0, 1] floats with round_intermediate (JAX) and the
    float64 NumPy path give the same uint8 image at the integer scales; at 1.5 exact
    mathematical .5 ties may round either way in float32 vs float64 (few pixels, 1 level)."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (20, 17, 3), dtype=np.uint8)
    a = imresize_np(img, scale)
    b = np.asarray(imresize_jit(img, scale=scale))
    c = imresize_jit(img.astype(np.float32) / 255.0, scale=scale, round_intermediate=True,
                     pixel_max=1.0)
    c = np.round(np.asarray(c) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(b, c)
    if scale == 1.5:
        diff = np.abs(a.astype(int) - b)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    else:
        np.testing.assert_array_equal(a, b)


def test_interior_matches_torch_antialiased_bicubic():
    """PyTorch's antialiased bicubic uses the same a=-0.5 widened kernel but renormalises
    at the borders instead of mirroring: equal away from the borders."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 1, (50, 45, 3))
    ours = imresize_np(img, 0.4)                              # 20 x 18
    t = torch.from_numpy(img.transpose(2, 0, 1)[None].copy())
    theirs = torch.nn.functional.interpolate(t, size=(20, 18), mode="bicubic",
                                             antialias=True, align_corners=False)
    theirs = theirs[0].numpy().transpose(1, 2, 0)
    b = 3
    np.testing.assert_allclose(ours[b:-b, b:-b], theirs[b:-b, b:-b], atol=1e-6)
    assert np.abs(ours - theirs).max() > 1e-3                  # the borders do differ


def test_jit_vmap_and_batch_agree():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.uniform(0, 1, (3, 12, 10, 3)), jnp.float32)
    batched = jax.jit(lambda v: imresize(v, 0.5))(x)
    mapped = jax.vmap(lambda v: imresize(v, 0.5))(x)
    single = imresize_jit(x[1], scale=0.5)
    assert batched.shape == (3, 6, 5, 3)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(mapped), atol=1e-6)
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(single), atol=1e-6)
    g = jax.grad(lambda v: imresize(v, 2.0).sum())(x[0])     # differentiable (float path)
    assert g.shape == x[0].shape and np.isfinite(np.asarray(g)).all()


def test_output_size_rule_and_errors():
    assert imresize_np(np.zeros((255, 10)), 1 / 3).shape == (85, 4)    # no float-noise row
    assert imresize_np(np.zeros((10, 10)), 0.35).shape == (4, 4)       # ceil(3.5)
    with pytest.raises(ValueError, match="exactly one"):
        imresize_np(np.zeros((4, 4)), 0.5, output_shape=(2, 2))
    with pytest.raises(ValueError, match="dimensions"):
        imresize(jnp.zeros((1, 1, 4, 4, 3)), 0.5)
    with pytest.raises(ValueError, match="scale must be > 0"):
        imresize_np(np.zeros((4, 4)), -1)


# ---------------------------------------------------------------------------------------
# Shipped benchmark LR files (MATLAB output) and the make_lr tool

def _read_exact(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def test_make_lr_reproduces_set5_set14_lr_files(shared_data, tmp_path):
    bench = shared_data / "benchmarks"
    n = 0
    for name in ("Set5", "Set14"):
        out = tmp_path / name
        written = make_lr.make_lr(str(bench / name / "HR"), str(out), [2, 3, 4], verbose=False)
        for s in (2, 3, 4):
            ref_dir = bench / name / "LR_bicubic" / f"X{s}"
            assert sorted(os.listdir(out / f"X{s}")) == sorted(os.listdir(ref_dir))
            for f in sorted(os.listdir(ref_dir)):
                ref_mode, ref = _read_exact(ref_dir / f)
                mode, got = _read_exact(out / f"X{s}" / f)
                assert mode == ref_mode, f"{name} x{s} {f}: mode {mode} vs {ref_mode}"
                np.testing.assert_array_equal(got, ref, err_msg=f"{name} x{s} {f}")
                n += 1
        assert len(written) == 3 * len(os.listdir(bench / name / "HR"))
    assert n == 3 * (5 + 14)


def test_jax_float32_path_bit_exact_on_set5(shared_data):
    """The JAX path computes in float32; with the uint8 rounding it still reproduces
    MATLAB exactly (checked on Set5 here; all of Set5/Set14 when it was written)."""
    bench = shared_data / "benchmarks" / "Set5"
    for s in (2, 3, 4):
        for f in sorted(os.listdir(bench / "HR")):
            hr = modcrop(read_rgb(str(bench / "HR" / f)), s)
            lr = read_rgb(str(bench / "LR_bicubic" / f"X{s}" / f.replace(".png", f"x{s}.png")))
            got = np.asarray(imresize_jit(hr, scale=1.0 / s))
            np.testing.assert_array_equal(got, lr, err_msg=f"{f} x{s}")


def test_make_lr_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        make_lr.make_lr(str(empty), str(tmp_path / "o"), [2])
    assert make_lr.main(["--hr", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                         "--scale", "2"]) == 2
    assert "nope" in capsys.readouterr().err
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="--degradation"):
        make_lr.make_lr(str(tmp_path), str(tmp_path / "o"), [2], degradation="nope")
    with pytest.raises(ValueError, match="integer"):
        make_lr.make_lr(str(tmp_path), str(tmp_path / "o"), [2.5])


def test_make_lr_cli_takes_several_scales_either_way(tmp_path):
    """`--scale 2 3` (as the README writes it) and `--scale 2 --scale 4` both work."""
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(hr / "a.png")
    assert make_lr.main(["--hr", str(hr), "--out", str(tmp_path / "o"), "--scale", "2", "3",
                         "--scale", "4"]) == 0
    for s in (2, 3, 4):
        lr = np.asarray(Image.open(tmp_path / "o" / f"X{s}" / f"ax{s}.png"))
        assert lr.shape == (12 // s, 12 // s, 3) and np.all(lr == 90)
