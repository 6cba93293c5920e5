"""Blind-SR degradations: kernels, blur, noise, presets, JAX vs NumPy, MATLAB LR files.

References are independent of the code under test: literal NumPy transcriptions of the
DAN/KAIR/MATLAB formulas, scipy.ndimage (correlate/convolve on uint8 as KAIR does) and
NumPy FFTs; the bicubic preset is checked against the shipped MATLAB LR files.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from jaxsr.config_base import base_config
from jaxsr.data import degradations as D
from jaxsr.data import images
from jaxsr.data import kernels as K

PRESETS = [("bicubic", 2), ("bd", 3), ("dn15", 2), ("nlcunet_iso", 4), ("nlcunet_aniso", 2),
           ("kenet", 2), ("kair", 4)]


def _config(name="bicubic", scale=2, **fields):
    c = base_config()
    c.scale = scale
    c.degradation.name = name
    for k, v in fields.items():
        c.degradation[k] = v
    return c


def _dan_kernel(l, sx, sy, theta, mu=(0.0, 0.0)):
    """Literal transcription of DAN's anisotropic Gaussian (matrix inverse, meshgrid)."""
    ax = np.arange(-(l // 2), l // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(u @ np.diag([sx ** 2, sy ** 2]) @ u.T)
    z = np.stack([xx - mu[0], yy - mu[1]], -1)
    k = np.exp(-0.5 * np.einsum("hwi,ij,hwj->hw", z, inv, z))
    return k / k.sum()


# ---------------------------------------------------------------------------------------
# kernels

def test_kernels_normalised_centred_with_analytic_moments():
    params = [(1.2, 1.2, 0.0), (1.0, 3.0, 0.7), (3.5, 1.5, -2.0), (2.0, 2.5, math.pi / 2)]
    size = 41
    jax_k = jax.vmap(lambda a, b, t: K.gaussian_kernel(size, a, b, t))(
        *[jnp.array(v, jnp.float32) for v in zip(*params)])
    for (sx, sy, th), kj in zip(params, np.asarray(jax_k)):
        kn = K.gaussian_kernel_np(size, sx, sy, th)
        np.testing.assert_allclose(kn, _dan_kernel(size, sx, sy, th), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(kj, kn, atol=2e-7)
        for k in (kn, kj):
            mx, my, cov = K.moments(k)
            assert abs(k.sum() - 1) < 1e-5 and abs(mx) < 1e-6 and abs(my) < 1e-6
            np.testing.assert_allclose(cov, K.analytic_cov(sx, sy, th), rtol=2e-3, atol=2e-3)
    # MATLAB fspecial('gaussian', 7, 1.6) (the BD kernel): separable, normalised
    g = np.exp(-np.arange(-3, 4) ** 2 / (2 * 1.6 ** 2))
    np.testing.assert_allclose(K.gaussian_kernel_np(7, 1.6, 1.6), np.outer(g, g) / g.sum() ** 2,
                               rtol=1e-12)
    # KAIR mean shift and DAN disturbance
    kn = K.gaussian_kernel_np(25, 2.0, 1.0, 0.4, mu=(-1.5, -1.5))
    np.testing.assert_allclose(kn, _dan_kernel(25, 2.0, 1.0, 0.4, (-1.5, -1.5)), rtol=1e-9)
    np.testing.assert_allclose(K.moments(kn)[:2], (-1.5, -1.5), atol=1e-6)
    d = np.random.default_rng(0).uniform(0, 0.25, (11, 11))
    k0 = _dan_kernel(11, 1.0, 2.0, 0.3) * (1 + d)
    np.testing.assert_allclose(K.gaussian_kernel_np(11, 1.0, 2.0, 0.3, disturb=d),
                               k0 / k0.sum(), rtol=1e-9)
    with pytest.raises(ValueError, match="odd"):
        K.gaussian_kernel_np(10, 1.0, 1.0)


def test_dihedral_kernels_cover_the_eight_transforms():
    k = np.arange(9.0).reshape(3, 3)
    outs = {K.dihedral_np(k, d).tobytes() for d in range(8)}
    assert len(outs) == 8
    for d in range(8):
        np.testing.assert_array_equal(np.asarray(K.dihedral(jnp.asarray(k), d)), K.dihedral_np(k, d))


# ---------------------------------------------------------------------------------------
# blur

def test_blur_direct_equals_fft_and_scipy():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (2, 16, 20, 3)).astype(np.float32)
    kern = rng.uniform(0, 1, (2, 5, 5)).astype(np.float32)      # asymmetric on purpose
    kern /= kern.sum((1, 2), keepdims=True)
    # periodic image: circular cross-correlation by NumPy FFT
    def circ_corr(img, k):
        kr = np.roll(np.pad(k, ((0, 11), (0, 15))), (-2, -2), (0, 1))   # centre tap at (0, 0)
        spec = np.fft.fft2(img, axes=(0, 1)) * np.conj(np.fft.fft2(kr))[..., None]
        return np.real(np.fft.ifft2(spec, axes=(0, 1)))
    ref = np.stack([circ_corr(x[b], kern[b]) for b in range(2)])
    for impl in ("direct", "fft"):
        out = np.asarray(D.blur(jnp.asarray(x), jnp.asarray(kern), "wrap", impl=impl))
        np.testing.assert_allclose(out, ref, atol=2e-3)
    # padding modes and true convolution against scipy.ndimage
    for padding, mode in (("reflect", "mirror"), ("edge", "nearest"), ("symmetric", "reflect")):
        ref = np.stack([ndimage.correlate(x[b].astype(np.float64), kern[b][..., None], mode=mode)
                        for b in range(2)])
        for impl in ("direct", "fft"):
            out = D.blur(jnp.asarray(x), jnp.asarray(kern), padding, impl=impl)
            np.testing.assert_allclose(np.asarray(out), ref, atol=2e-3)
        np.testing.assert_allclose(D.blur_np(x, kern, padding), ref, atol=1e-9)
    ref = np.stack([ndimage.convolve(x[b].astype(np.float64), kern[b][..., None], mode="wrap")
                    for b in range(2)])[:, ::2, ::2]
    out = D.blur(jnp.asarray(x), jnp.asarray(kern), "wrap", "convolve", stride=2, impl="direct")
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-3)


# ---------------------------------------------------------------------------------------
# presets, whole pipeline

def test_noise_has_the_requested_std():
    cfg = _config("custom", 1, noise_min=5.0, noise_max=25.0, quantize="none")
    spec = D.resolve(cfg)

    @jax.jit
    def run(key):
        params = D.sample_params(key, spec, 4, (64, 64))
        return params["noise_level"], D.apply_degradation(jnp.full((4, 64, 64, 3), 128.0),
                                                          params, spec)
    levels, lr = map(np.asarray, run(jax.random.key(4)))
    assert np.all((levels >= 5) & (levels <= 25)) and len(set(levels.round(4))) == 4
    np.testing.assert_allclose((lr - 128.0).std(axis=(1, 2, 3)), levels, rtol=0.03)
    np.testing.assert_allclose((lr - 128.0).mean(axis=(1, 2, 3)), 0.0, atol=1.0)


def test_per_sample_kernels_differ_and_are_reproducible_from_the_key():
    cfg = _config("nlcunet_aniso", 2)
    spec = D.resolve(cfg)
    keys = jax.random.split(jax.random.key(0), 3)
    sample = jax.jit(jax.vmap(lambda k: D.sample_params(k, spec, 4, (8, 8))["kernel"]))
    ks = np.asarray(sample(keys))                      # [3 keys, 4 samples, 11, 11]
    flat = ks.reshape(12, -1)
    assert len({row.tobytes() for row in flat}) == 12          # all kernels differ
    np.testing.assert_array_equal(np.asarray(sample(keys)), ks)  # same keys, same kernels
    hr = jax.random.uniform(jax.random.key(9), (4, 16, 16, 3))
    synth = jax.jit(lambda h, k: D.synthesize_lr(h, k, cfg))
    a, b = synth(hr, jax.random.key(1)), synth(hr, jax.random.key(1))
    assert a.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(synth(hr, jax.random.key(2))))
    # quantised without clamping (NLCUnet): multiples of 1/255
    np.testing.assert_allclose(np.asarray(a) * 255, np.round(np.asarray(a) * 255), atol=1e-3)


@pytest.mark.parametrize("name,scale", PRESETS)
def test_numpy_and_jax_paths_produce_the_same_lr(name, scale):
    """Same parameters -> same LR; and a constant image (sample 0, noise 0) stays constant
    through blur, downscale and quantisation."""
    spec = D.resolve(_config(name, scale))
    rng = np.random.default_rng(5)
    hr = rng.integers(0, 256, (2, 12 * scale, 12 * scale, 3)).astype(np.uint8)
    hr[0] = 100
    params = D.sample_params_np(rng, spec, 2, (12, 12))
    if "noise_level" in params:
        params["noise_level"][0] = 0.0
    lr_j = np.asarray(D.apply_degradation(jnp.asarray(hr, jnp.float32), params, spec))
    lr_n = D.apply_degradation_np(hr, params, spec)
    assert lr_j.shape == lr_n.shape == (2, 12, 12, 3)
    np.testing.assert_allclose(lr_j[0], 100.0, atol=1e-3)
    np.testing.assert_allclose(lr_n[0], 100.0, atol=1e-9)
    diff = np.abs(lr_j - lr_n)
    # float32 FFT vs float64: a rounding/floor boundary may flip by one level, rarely
    assert diff.max() <= 1.0 + 1e-3 and (diff > 1e-3).mean() < 2e-3, (name, diff.max())
    lr01 = D.synthesize_lr_np(hr, np.random.default_rng(0), _config(name, scale))
    assert lr01.shape == (2, 12, 12, 3) and lr01.dtype == np.float32


def test_kair_matches_scipy_uint8_convolution_and_decimation():
    spec = D.resolve(_config("kair", 3))
    rng = np.random.default_rng(7)
    hr = rng.integers(0, 256, (2, 30, 27, 3)).astype(np.uint8)
    params = D.sample_params_np(rng, spec, 2, (10, 9))
    lr = np.asarray(D.apply_degradation(jnp.asarray(hr, jnp.float32), params, spec))
    for b in range(2):    # KAIR: ndimage.convolve on uint8 (truncates), [0::sf], + AWGN
        blurred = ndimage.convolve(hr[b], params["kernel"][b][..., None], mode="wrap")
        ref = blurred[::3, ::3].astype(np.float64) + params["noise_level"][b] * params["noise"][b]
        diff = np.abs(lr[b] - ref)
        assert (diff > 1e-3).mean() < 5e-3 and diff.max() <= 1.0 + 1e-3


def test_bicubic_preset_reproduces_the_matlab_lr_files(shared_data):
    hr = images.read_rgb(str(shared_data / "benchmarks/Set5/HR/bird.png"))
    for s in (2, 3):
        want = images.read_rgb(str(shared_data / f"benchmarks/Set5/LR_bicubic/X{s}/birdx{s}.png"))
        x = jnp.asarray(images.modcrop(hr, s)[None], jnp.float32) / 255.0
        lr = jax.jit(lambda h: D.synthesize_lr(h, jax.random.key(0), _config("bicubic", s)))(x)
        np.testing.assert_array_equal(np.asarray(D.to_uint8(lr[0])), want)


def test_resolve_overrides_and_errors():
    spec = D.resolve(base_config())
    assert spec.kernel == "none" and spec.bicubic_round and spec.quantize == "round_clip"
    spec = D.resolve(_config("nlcunet_iso", 3, sigma_max=2.5))
    assert (spec.kernel_size, spec.sigma_min, spec.sigma_max) == (21, 0.2, 2.5)
    assert D.resolve(_config("nlcunet_iso", 4)).sigma_max == 4.0
    assert D.resolve(_config("DN25", 2)).noise_max == 25.0
    loaded = ml_collections.ConfigDict({"scale": 4, "degradation": {"name": "kair",
                                                                   "noise_levels": [0, 5]}})
    assert D.resolve(loaded).noise_levels == (0, 5)            # config.json round trip
    with pytest.raises(ValueError, match="config.degradation.name"):
        D.resolve(_config("gaussian"))
    with pytest.raises(ValueError, match="config.degradation.blur_padding"):
        D.resolve(_config("bd", 2, blur_padding="zeros"))
    with pytest.raises(ValueError, match="config.scale=3"):
        D.resolve(_config("kenet", 3))
    c = _config()
    c.degradation.sigma = 1.0
    with pytest.raises(ValueError, match="unknown fields"):
        D.resolve(c)
    with pytest.raises(ValueError, match="multiple of config.scale=4"):
        D.synthesize_lr(jnp.zeros((1, 18, 16, 3)), jax.random.key(0), _config("bicubic", 4))
    with pytest.raises(ValueError, match="float HR"):
        D.synthesize_lr(jnp.zeros((1, 16, 16, 3), jnp.uint8), jax.random.key(0), _config())
