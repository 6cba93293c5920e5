"""jaxsr.inference: whole-image padding, tiled blending, official chop, x8, auto-tiling.

References are independent NumPy formulations of the rules in architectures.md section 1
(EDSR-PyTorch forward_chop / forward_x8), not calls into the code under test.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import inference
from jaxsr.models.edsr import EDSR

SCALE = 2


@pytest.fixture(scope="module")
def edsr_fn():
    model = EDSR(scale=SCALE, n_resblocks=2, n_feats=8)
    return inference.bind(model, random_params(model))


def random_params(model, seed=0):
    """LeCun-normal kernels and zero biases from the shapes alone (eval_shape: no init
    compile, which costs seconds on a busy 2-core machine)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, 8, 8, 3))))["params"]
    return jax.tree.map(lambda s: np.zeros(s.shape, np.float32) if len(s.shape) < 2 else
                        (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1])))
                        .astype(np.float32), shapes)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


# --- fake models: position-dependent (to expose geometry) and dihedral-equivariant -----

def _ramp_np(n, h, w):
    """A value that depends on the pixel's position inside the patch (HR coords)."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.broadcast_to((yy * 0.001 + xx * 0.0007)[None, :, :, None], (n, h, w, 1))


def positional_np(x):  # NHWC
    up = x.repeat(SCALE, 1).repeat(SCALE, 2)
    return up + _ramp_np(*up.shape[:3])


@jax.jit
def positional_jax(x):
    up = jnp.repeat(jnp.repeat(x, SCALE, 1), SCALE, 2)
    return up + jnp.asarray(_ramp_np(*up.shape[:3]), jnp.float32)


_SYM = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16  # D4-invariant kernel


@jax.jit
def equivariant_jax(x):
    """Symmetric blur (zero padding) -> channel mix -> tanh -> nearest upsample."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = sum(_SYM[i, j] * xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
    y = jnp.tanh(3.0 * y @ jnp.array([[1.0, 0.5, 0], [0, 1, -0.3], [0.2, 0, 1]]))
    return jnp.repeat(jnp.repeat(y, SCALE, 1), SCALE, 2)


# --- whole image -------------------------------------------------------------------------

def test_whole_image_pads_to_multiple_and_crops_back():
    seen = []

    @jax.jit
    def needs_multiple_of_8(x):
        seen.append(x.shape)  # trace time: the padded shape
        assert x.shape[1] % 8 == 0 and x.shape[2] % 8 == 0 and x.shape[1] >= 24
        return positional_jax(x)

    lr = _image(13, 30)
    sr = inference.super_resolve(needs_multiple_of_8, lr, scale=SCALE, multiple=8,
                                 min_size=24)
    assert seen and seen[0] == (1, 24, 32, 3)
    assert sr.shape == (26, 60, 3) and sr.dtype == np.float32
    np.testing.assert_allclose(sr, positional_np(lr[None])[0], atol=1e-6)
    with pytest.raises(TypeError, match="float"):
        inference.super_resolve(positional_jax, (lr * 255).astype(np.uint8), scale=SCALE)


# --- tiling ------------------------------------------------------------------------------

def test_blend_weights_are_a_partition_of_unity_with_zero_margins():
    starts = inference.tile_starts(100, 40, 16)
    assert starts[0] == 0 and starts[-1] == 60
    assert all(b - a <= 40 - 16 for a, b in zip(starts, starts[1:]))
    ws = inference.blend_weights(starts, 40, 100, SCALE)
    total = np.zeros(100 * SCALE)
    for s, w in zip(starts, ws):
        total[s * SCALE:(s + 40) * SCALE] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    # a tile's weight is 0 within overlap/4 of an inner edge, 1 at the image border
    assert ws[1][: 16 * SCALE // 4].max() == 0 and ws[0][0] == 1 and ws[-1][-1] == 1


def test_tiled_equals_whole_for_edsr(edsr_fn):
    # tiny EDSR: receptive-field radius 7.5 LR px <= overlap/4 = 8
    lr = _image(48, 70)
    whole = inference.super_resolve(edsr_fn, lr, scale=SCALE)
    n0 = inference.num_compiled(edsr_fn)
    info = {}
    tiled = inference.super_resolve(edsr_fn, lr, scale=SCALE, tile=40, tile_overlap=32,
                                    tile_batch=4, info=info)
    assert info["mode"] == "tiled"
    assert inference.num_compiled(edsr_fn) == n0 + 1  # one compile for all tile batches
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # the test can fail: an overlap smaller than the receptive field leaves seams
    rough = inference.super_resolve(edsr_fn, lr, scale=SCALE, tile=40, tile_overlap=4)
    assert np.abs(rough - whole).max() > 1e-3


# --- chop --------------------------------------------------------------------------------

def reference_chop(model, x, scale, shave=10, min_size=120000):
    """architectures.md section 1, forward_chop, on NHWC numpy, quadrant by quadrant."""
    h, w = x.shape[1:3]
    hs = h // 2 + shave
    hs = hs + (4 - hs % 4)   # always adds 1..4
    ws = w // 2 + shave
    ws = ws + (8 - ws % 8)   # always adds 1..8
    patches = [x[:, :hs, :ws], x[:, :hs, w - ws:], x[:, h - hs:, :ws], x[:, h - hs:, w - ws:]]
    if hs * ws < min_size:
        outs = [model(p) for p in patches]  # one GPU: one quadrant at a time
    else:
        outs = [reference_chop(model, p, scale, shave, min_size) for p in patches]
    top, left = scale * (h // 2), scale * (w // 2)
    bottom, right = scale * h - top, scale * w - left
    tl = outs[0][:, :top, :left]
    tr = outs[1][:, :top, outs[1].shape[2] - right:]
    bl = outs[2][:, outs[2].shape[1] - bottom:, :left]
    br = outs[3][:, outs[3].shape[1] - bottom:, outs[3].shape[2] - right:]
    return np.concatenate([np.concatenate([tl, tr], 2), np.concatenate([bl, br], 2)], 1)


@pytest.mark.parametrize("hw,min_size", [((61, 87), 120000), ((75, 131), 1500),
                                         ((100, 64), 2000)])
def test_chop_geometry_matches_reference(hw, min_size):
    lr = _image(*hw, seed=1)
    got = inference.forward_chop(positional_jax, lr, scale=SCALE, min_size=min_size)
    want = reference_chop(positional_np, lr[None].astype(np.float64), SCALE,
                          min_size=min_size)[0]
    assert got.shape == want.shape == (hw[0] * SCALE, hw[1] * SCALE, 3)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the positional model makes chop differ from a whole-image run: geometry is tested
    assert np.abs(got - positional_np(lr[None])[0]).max() > 1e-3


def test_chop_sizes_rounding():
    # h: half + 10 then up to the next multiple of 4 (+4 when already divisible)
    assert inference.chop_sizes(60, 100) == (44, 64)   # 40 -> 44; 60 -> 64
    assert inference.chop_sizes(61, 86) == (44, 56)    # 40 -> 44; 53 -> 56
    assert inference.chop_sizes(27, 31) == (24, 32)
    with pytest.raises(ValueError, match="min_size"):
        inference.forward_chop(positional_jax, _image(24, 32), scale=SCALE, min_size=10)


def test_chop_of_edsr_equals_whole(edsr_fn):
    # shave 10 > the tiny EDSR's receptive-field radius, so chop is exact here
    lr = _image(50, 70, seed=2)
    whole = inference.super_resolve(edsr_fn, lr, scale=SCALE)
    chop = inference.super_resolve(edsr_fn, lr, scale=SCALE, chop=True)
    np.testing.assert_allclose(chop, whole, atol=1e-5)


# --- self-ensemble -------------------------------------------------------------------------

def reference_x8(model, x):
    """{id, flip-W} x {id, flip-H} x {id, transpose}, un-transformed and averaged."""
    outs = []
    for t, fh, fw in itertools.product((False, True), repeat=3):
        y = x
        y = np.flip(y, 1) if fw else y
        y = np.flip(y, 0) if fh else y
        y = np.swapaxes(y, 0, 1) if t else y
        z = np.asarray(model(np.ascontiguousarray(y)[None]))[0]
        z = np.swapaxes(z, 0, 1) if t else z
        z = np.flip(z, 0) if fh else z
        z = np.flip(z, 1) if fw else z
        outs.append(z)
    return np.mean(outs, axis=0)


def test_self_ensemble_of_equivariant_model_changes_nothing():
    lr = _image(20, 28, seed=3)
    plain = inference.super_resolve(equivariant_jax, lr, scale=SCALE)
    x8 = inference.super_resolve(equivariant_jax, lr, scale=SCALE, self_ensemble=True)
    np.testing.assert_allclose(x8, plain, atol=1e-6)


def test_self_ensemble_matches_reference_for_non_equivariant_model():
    lr = _image(20, 28, seed=4)
    x8 = inference.super_resolve(positional_jax, lr, scale=SCALE, self_ensemble=True)
    np.testing.assert_allclose(x8, reference_x8(positional_jax, lr), atol=1e-6)
    assert np.abs(x8 - positional_np(lr[None])[0]).max() > 1e-3


# --- memory-aware auto-tiling ----------------------------------------------------------------

def test_auto_tiling_triggers_under_small_max_memory(edsr_fn, caplog):
    lr = _image(96, 90, seed=5)
    info = {}
    whole = inference.super_resolve(edsr_fn, lr, scale=SCALE, max_memory=2**40, info=info)
    assert info["mode"] == "whole" and info["estimated_bytes"] > 0
    budget = info["estimated_bytes"] // 3
    info = {}
    tiled = inference.super_resolve(edsr_fn, lr, scale=SCALE, max_memory=budget, info=info)
    assert info["mode"] == "auto-tiled", info
    assert info["tile_estimated_bytes"] <= budget and info["tile"] < 96
    np.testing.assert_allclose(tiled, whole, atol=1e-5)  # default overlap 32 covers the RF
    with pytest.raises(MemoryError, match="max_memory"):
        inference.super_resolve(edsr_fn, lr, scale=SCALE, max_memory=1000)


def test_partial_with_per_image_arguments_compiles_once():
    @jax.jit
    def with_offset(x, offset):
        return positional_jax(x) + offset

    lr = _image(12, 16, seed=6)
    outs = [inference.super_resolve(functools.partial(with_offset, offset=jnp.float32(v)),
                                    lr, scale=SCALE) for v in (0.0, 1.0)]
    assert inference.num_compiled(functools.partial(with_offset, offset=0.0)) == 1
    np.testing.assert_allclose(outs[1] - outs[0], 1.0, atol=1e-6)
