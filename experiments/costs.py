"""XLA cost numbers of compiled programs and the roofline columns that divide them by the
machine's peak: the bottom layer of the benchmarks (bench_fns, roofline, benchmark).

`peak_rates`: the machine's measured peak, in the same run as the rows it divides: a
large float32 matmul and a large 3x3 convolution on all cores (on GPU/TPU also the
bfloat16 matmul), GFLOP/s of XLA's cost analysis per second.

FLOPs: XLA's cost analysis of the compiled program. It counts a loop body once, so the
programs are lowered for counting with every attention chunk in one step
(`chunked.default_chunks_per_step(ALL_CHUNKS)`, the same arithmetic); the timed programs
are the default ones.
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import xla_analysis
from jaxsr.attention import chunked


def alternating_medians(fns: dict, repeats: int) -> dict:
    """Median seconds per callable, calls interleaved (A B A B ...) after one warm-up
    each, so that load changes on a shared machine hit all of them alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def flops_of(compiled) -> float | None:
    return xla_analysis.cost_report(compiled)["flops"]


def counted_flops(jitted, *args) -> float | None:
    """FLOPs of `jitted(*args)` with every attention chunk in one step (module doc).
    `jitted`: a jax.jit function or an inference.BoundApply (which wraps one)."""
    jit_fn = getattr(jitted, "_fn", jitted)
    jit_fn.clear_cache()          # a cached trace would ignore the step-size context ...
    try:
        with chunked.default_chunks_per_step(chunked.ALL_CHUNKS):
            return flops_of(jitted.lower(*args).compile())
    finally:
        jit_fn.clear_cache()      # ... and later traces must not reuse this one


def memory_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


# ---------------------------------------------------------------------------------------
# The machine's peak

def peak_rates(repeats: int = 5, matmul_size: int = 4096,
               conv_shape=(8, 256, 256, 64)) -> dict:
    """GFLOP/s of a 4096^2 float32 matmul and a 3x3 64->64 convolution on 8x256x256
    (NHWC), on all cores; on accelerators also the bfloat16 matmul."""
    rng = np.random.default_rng(0)
    n, ch = matmul_size, conv_shape[-1]
    a = jnp.asarray(rng.random((n, n), np.float32))
    x = jnp.asarray(rng.random(conv_shape, np.float32))
    w = jnp.asarray(rng.random((3, 3, ch, ch), np.float32))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    cases = {"matmul_f32": (jax.jit(jnp.matmul), (a, a)), "conv_f32": (conv, (x, w))}
    if jax.default_backend() != "cpu":
        b = a.astype(jnp.bfloat16)
        cases["matmul_bf16"] = (jax.jit(jnp.matmul), (b, b))
    out = {}
    for name, (fn, args) in cases.items():
        compiled = fn.lower(*args).compile()
        sec = alternating_medians({name: lambda: jax.block_until_ready(compiled(*args))},
                                  repeats)[name]
        out[name] = flops_of(compiled) / sec / 1e9
    return out


def roofline(row: dict, peak: dict) -> None:
    """Adds achieved GFLOP/s and the fraction of the matmul and conv peaks to a row
    with 'flops' and 'jax_s'."""
    if not row.get("flops") or not row.get("jax_s"):
        return
    row["gflop_per_s"] = row["flops"] / row["jax_s"] / 1e9
    for name, rate in peak.items():
        row[f"peak_frac_{name}"] = row["gflop_per_s"] / rate


# ---------------------------------------------------------------------------------------
# Official-size rows

def roofline_cells(r: dict) -> list[str]:
    """GFLOP/s and % of the measured matmul / conv peaks (roofline.roofline)."""
    if "gflop_per_s" not in r:
        return ["-", "-"]
    fracs = [f"{r[k]:.0%}" for k in ("peak_frac_matmul_f32", "peak_frac_conv_f32") if k in r]
    return [f"{r['gflop_per_s']:.1f}", " / ".join(fracs)]


ROOFLINE_HEADER = ["GFLOP", "GFLOP/s", "% peak mm / conv"]


def peak_line(peak: dict | None) -> str:
    if not peak:
        return ""
    return ("Measured peak (this run, all cores): " +
            ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()))
