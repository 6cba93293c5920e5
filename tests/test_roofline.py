"""experiments/costs.py and roofline.py: FLOP counting through the attention loop,
roofline columns, alternating timing, the official-size rows' torch twins and the memory
option."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import costs, roofline
from jaxsr.attention import chunked, lsh


def test_counted_flops_include_every_chunk_of_the_loop():
    """XLA's cost analysis counts a loop body once; counted_flops must see all chunks:
    at least the two chunk matmuls, 2 * R*M*K*3K * (Cq + C), for a 48x48 map."""
    length, k, r, cq, c = 48 * 48, 144, 4, 16, 64
    rot = jnp.zeros((cq, r, lsh.num_buckets(length, k) // 2))
    def attention(q, v, per_step=None):
        return lsh.lsh_attention(q, v, rot, k, lsh.CROSS_POLYTOPE, chunks_per_step=per_step)
    args = (jnp.zeros((length, cq)), jnp.zeros((length, c)))
    matmuls = 2 * r * (length // k) * k * 3 * k * (cq + c)
    looped = costs.flops_of(jax.jit(lambda q, v: attention(q, v, 2)).lower(*args).compile())
    fn = jax.jit(attention)
    counted = costs.counted_flops(fn, *args)
    assert looped < matmuls / 4 < matmuls <= counted < 1.3 * matmuls
    # the counting trace must not leak into later compilations of the same function
    with chunked.default_chunks_per_step(2):
        assert costs.flops_of(fn.lower(*args).compile()) == pytest.approx(looped)


def test_roofline_columns_follow_the_formula():
    row = {"flops": 3e9, "jax_s": 0.5}
    costs.roofline(row, {"matmul_f32": 12.0, "conv_f32": 4.0})
    assert row["gflop_per_s"] == pytest.approx(6.0)
    assert row["peak_frac_matmul_f32"] == pytest.approx(0.5)
    assert row["peak_frac_conv_f32"] == pytest.approx(1.5)
    empty = {"flops": None, "jax_s": 1.0}
    costs.roofline(empty, {"matmul_f32": 1.0})
    assert "gflop_per_s" not in empty


def test_alternating_medians_interleave_the_calls():
    calls = []
    out = costs.alternating_medians({"a": lambda: calls.append("a"),
                                        "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 4           # one warm-up each, then A B A B A B
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())


def test_peak_rates_on_small_problems():
    peak = costs.peak_rates(1, matmul_size=256, conv_shape=(1, 32, 32, 16))
    assert set(peak) >= {"matmul_f32", "conv_f32"} and min(peak.values()) > 0


def test_official_torch_twins_use_the_official_sort_and_sizes():
    pytest.importorskip("torch")
    fmod, tmod = roofline._block_pair("nlsa")
    assert tmod.stable_sort is False and (tmod.chunk_size, tmod.n_hashes) == (144, 4)
    assert (fmod.chunk_size, fmod.n_hashes) == (144, 4)
    c = roofline.official_config("dlsn")
    assert (c.model.n_resgroups, c.model.n_resblocks, c.model.n_feats) == (2, 2, 64)
    assert (c.train.batch_size, c.train.patch_size // c.scale) == (16, 48)


def test_chunks_per_step_caps_compiled_memory():
    """The loop step size trades memory: one step holding every chunk needs far more
    scratch than the default cache-sized steps (XLA memory analysis, 64x64 map)."""
    rows = roofline.memory_rows(64, steps=(None, chunked.ALL_CHUNKS))
    by = {(r["network"], r["chunks_per_step"]): r["peak_bytes"] for r in rows}
    for kind in ("nlsa", "gla"):
        assert by[(kind, "all")] > 2 * by[(kind, "default")], by


def test_default_chunks_per_step_context_restores():
    assert chunked.step_size(100, 16) == chunked.step_size(100, 16, None)
    with chunked.default_chunks_per_step(7):
        assert chunked.step_size(100, 16) == 7
        assert chunked.step_size(100, 16, 3) == 3
        assert chunked.step_size(5, 16) == 5
    assert chunked.step_size(100, 16) != 7 or jax.default_backend() != "cpu"
    np.testing.assert_equal(chunked.step_size(10**6, 144),
                            chunked.CPU_SCORES_PER_STEP // (3 * 144 * 144)
                            if jax.default_backend() == "cpu" else 10**6)
