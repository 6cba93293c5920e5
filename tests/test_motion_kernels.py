"""KAIR's random motion-blur kernels (jaxsr.data.motion_kernels) against a loop-by-loop
NumPy reference (tests/motion_kernel_reference.py), and their use in the 'kair' preset."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr.config_base import base_config
from jaxsr.data import degradations as D
from jaxsr.data import kernels as K
from jaxsr.data import motion_kernels as M
from tests import motion_kernel_reference as ref


def _draws(rng, resize_to=None):
    normals, u = rng.standard_normal(M.N_NORMALS), rng.random(M.N_UNIFORMS)
    if resize_to is not None:                  # force the enlarge-and-crop branch
        u[1] = 0.3
        u[2] = u[3] = (resize_to - 25 + 0.5) / 101
    return normals, u


def test_trajectory_matches_loop_reference():
    rng = np.random.default_rng(2)
    for _ in range(5):
        normals = rng.standard_normal(M.N_NORMALS)
        want = ref.trajectory(normals)[:2]
        np.testing.assert_allclose(M.trajectory(normals, np), want, rtol=1e-9,
                                   atol=1e-9 * np.abs(want).max())


def test_kernel_matches_loop_reference_on_every_branch():
    """From the same trajectory: kernel sides 5..27, threshold lists of h and h + 1
    entries, with and without the enlarge-and-crop step, and the Gaussian fallback (a 5x
    enlargement leaves < 0.1 of the mass in the crop for some draws)."""
    rng = np.random.default_rng(3)
    sides, fallbacks, long_lists = set(), 0, 0
    for i in range(60):
        normals, u = _draws(rng, resize_to=(None, 60, 125)[i % 3])
        x = ref.trajectory(normals)
        want = ref.kernel_from_trajectory(x, u)
        got = M.kernel_from_trajectory(x[:2], u, 25, np)
        np.testing.assert_allclose(got, want, atol=1e-12, err_msg=f"draw {i}")
        side = int(M.side_from_uniform(u[0], np))
        sides.add(side)
        fallbacks += int(ref.framed_kernel(x, u).sum() < 0.1)
        d = x[0].max() - x[0].min()
        long_lists += int(len(np.arange(x[0].min(), x[0].max(), d / side)) > side)
    assert min(sides) <= 7 and max(sides) >= 21, sides
    assert fallbacks >= 1 and long_lists >= 1


def test_jax_float32_path_matches_numpy_and_vmaps():
    """float32 on the device vs float64: equal up to rounding, except where rounding moves
    a trajectory point across a cell edge or changes a threshold count (rare)."""
    rng = np.random.default_rng(4)
    draws = [_draws(rng, resize_to=(None, 90)[i % 2]) for i in range(16)]
    normals = jnp.asarray(np.stack([d[0] for d in draws]), jnp.float32)
    u = jnp.asarray(np.stack([d[1] for d in draws]), jnp.float32)
    got = np.asarray(jax.jit(jax.vmap(M.motion_kernel))(normals, u))
    close = [np.allclose(got[i], M.motion_kernel(n, uu, 25, np), atol=2e-5)
             for i, (n, uu) in enumerate(draws)]
    assert sum(close) >= 13, close
    assert got.shape == (16, 25, 25) and np.all(got >= 0)
    np.testing.assert_allclose(got.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_kair_preset_mixes_motion_and_gaussian_kernels():
    cfg = base_config()
    cfg.scale = 2
    cfg.degradation.name = "kair"
    spec = D.resolve(cfg)
    assert spec.motion_prob == 0.5
    sample = jax.jit(lambda k: D.sample_params(k, spec, 64, (8, 8)))
    p = sample(jax.random.key(0))
    motion = np.asarray(p["motion"])
    assert 16 <= motion.sum() <= 48                      # about half of 64
    k = np.asarray(p["kernel"])
    np.testing.assert_allclose(k.sum(axis=(1, 2)), 1.0, atol=1e-5)
    # The covariance eigenvalues (invariant to the random flips) are sigma_x^2, sigma_y^2
    # for the Gaussian draws and unrelated for the motion ones.
    matches = []
    for i in range(64):
        got = np.sort(np.linalg.eigvalsh(K.moments(k[i])[2]))
        want = np.sort([float(p["sigma_x"][i]) ** 2, float(p["sigma_y"][i]) ** 2])
        matches.append(np.allclose(got, want, rtol=0.05, atol=0.02))
    matches = np.array(matches)
    assert matches[~motion].all() and matches[motion].mean() < 0.2
    np.testing.assert_array_equal(np.asarray(sample(jax.random.key(0))["kernel"]), k)
    lr = D.synthesize_lr(jnp.full((2, 16, 16, 3), 0.5), jax.random.key(1), cfg)
    assert lr.shape == (2, 8, 8, 3) and np.isfinite(np.asarray(lr)).all()
    params = D.sample_params_np(np.random.default_rng(0), spec, 4, (8, 8))
    assert params["kernel"].shape == (4, 25, 25) and params["motion"].dtype == bool


def test_motion_prob_is_checked():
    cfg = base_config()
    cfg.degradation.name = "bicubic"
    cfg.degradation.motion_prob = 0.5
    with pytest.raises(ValueError, match="motion_prob"):
        D.resolve(cfg)
