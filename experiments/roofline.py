"""Roofline columns and the official-size rows of `experiments/benchmark.py`.

* `peak_rates`: the machine's measured peak, in the same run as the rows it divides: a
  large float32 matmul and a large 3x3 convolution on all cores (on GPU/TPU also the
  bfloat16 matmul), GFLOP/s of XLA's cost analysis per second.
* `official_rows`: the configurations the official-code comparison is about, against
  the timing-faithful transcriptions of the official modules (tests/torch_refs, run as
  the official code runs: unstable `torch.sort`, fresh random rotations, float32, torch
  with the process's threads): one NLSA (C=64, K=144, R=4) and one GLA (C=64, K=128,
  R=3) block at 64/128/256 px maps, forward and forward + backward; the NLSN
  (n_resblocks=8, n_feats=64, attn_every=8, K=144, R=4) and DLSN (n_resgroups=2,
  n_resblocks=2, n_feats=64, K=128, R=3) train steps (batch 16, LR 48x48, x2, L1 + Adam)
  and forwards at LR 128/256. JAX and torch calls alternate (A B A B ...), median.

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

from jaxsr.attention import chunked

BLOCK_SIZES = (64, 128, 256)
NET_SIZES = (128, 256)
OFFICIAL = {   # network -> model overrides of configs/X.py (x2)
    "nlsn": {"n_resblocks": 8, "n_feats": 64, "attn_every": 8, "chunk_size": 144,
             "n_hashes": 4},
    "dlsn": {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 64, "chunk_size": 128,
             "n_hashes": 3},
}


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
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


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

def _block_pair(kind: str):
    from jaxsr.attention import GlobalLearnableAttention, NonLocalSparseAttention
    from tests.torch_refs import lsh as tlsh
    if kind == "nlsa":
        fmod = NonLocalSparseAttention(chunk_size=144, n_hashes=4)
        tmod = tlsh.NonLocalSparseAttention(channels=64, chunk_size=144, n_hashes=4)
    else:
        fmod = GlobalLearnableAttention(chunk_size=128, n_hashes=3)
        tmod = tlsh.GLA(channels=64, chunk_size=128, n_hashes=3)
    tmod.stable_sort = False          # the official unstable torch.sort
    return fmod, tmod


def block_rows(kind: str, size: int, repeats: int) -> list[dict]:
    """Forward and forward + backward (params and input) of one block, JAX vs torch."""
    import torch
    fmod, tmod = _block_pair(kind)
    x = jnp.asarray(np.random.default_rng(3).random((1, size, size, 64), np.float32))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype),
                          jax.eval_shape(fmod.init, jax.random.PRNGKey(0), x)["params"])
    key = jax.random.PRNGKey(1)
    fwd = jax.jit(lambda p, x, k: fmod.apply({"params": p}, x, rngs={"lsh": k}))
    grad = jax.jit(jax.grad(lambda p, x, k: jnp.sum(
        fmod.apply({"params": p}, x, rngs={"lsh": k})), argnums=(0, 1)))
    tx = torch.rand(1, 64, size, size)
    txg = tx.clone().requires_grad_(True)

    def torch_fwd():
        with torch.no_grad():
            tmod(tx)

    def torch_train():
        tmod.zero_grad(set_to_none=True)
        tmod(txg).sum().backward()
    rows = []
    for what, jfn, tfn in (("block_fwd", fwd, torch_fwd), ("block_fwd_bwd", grad, torch_train)):
        compiled = jfn.lower(params, x, key).compile()
        t = alternating_medians({"jax": lambda: jax.block_until_ready(compiled(params, x, key)),
                                 "torch": tfn}, repeats)
        rows.append({"network": kind, "variant": "official", "what": what, "size": size,
                     "batch": 1, "jax_s": t["jax"], "torch_s": t["torch"],
                     "flops": counted_flops(jfn, params, x, key),
                     "peak_bytes": memory_bytes(compiled)})
    return rows


def memory_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def official_config(network: str):
    from experiments import common
    c = common.load_config(f"configs/{network}.py")
    for k, v in OFFICIAL[network].items():
        c.model[k] = v
    return c


def network_rows(network: str, repeats: int, sizes=NET_SIZES) -> list[dict]:
    """Train step (batch 16, LR 48x48) and forwards of the official-size network."""
    from experiments import benchmark
    from jaxsr import models
    config = official_config(network)
    model = models.build_model(config)
    tnet = benchmark.torch_model(network, config)
    for m in tnet.attention_layers():
        m.stable_sort = False
    base = {"network": network, "variant": "official", "scale": int(config.scale)}
    step = benchmark.jax_train_step_fn(config, model)
    torch_step = benchmark.torch_train_step_fn(tnet, config)
    t = alternating_medians({"jax": step["run"], "torch": torch_step}, repeats)
    p = config.train.patch_size // config.scale
    rows = [{**base, "what": "train_step", "size": p, "batch": int(config.train.batch_size),
             "jax_s": t["jax"], "torch_s": t["torch"], "flops": step["flops"],
             "peak_bytes": step["peak_bytes"]}]
    params = benchmark.random_params(model, min(sizes))
    for size in sizes:
        fwd = benchmark.jax_forward_fn(model, params, size)
        torch_fwd = benchmark.torch_forward_fn(tnet, size)
        t = alternating_medians({"jax": fwd["run"], "torch": torch_fwd}, repeats)
        rows.append({**base, "what": "forward", "size": size, "batch": 1, "jax_s": t["jax"],
                     "torch_s": t["torch"], "flops": fwd["flops"],
                     "peak_bytes": fwd["peak_bytes"]})
    return rows


def official_rows(repeats: int, blocks=BLOCK_SIZES, networks=tuple(OFFICIAL),
                  net_sizes=NET_SIZES) -> list[dict]:
    import logging
    rows = []
    for kind in ("nlsa", "gla"):
        for size in blocks:
            rows += block_rows(kind, size, repeats)
            logging.info("official %s %d: %s", kind, size, rows[-1])
    for network in networks:
        rows += network_rows(network, repeats, net_sizes)
        logging.info("official %s done", network)
    for r in rows:
        r["ratio"] = r["torch_s"] / r["jax_s"]
    return rows


# ---------------------------------------------------------------------------------------
# Attention memory at accelerator sizes (compiled, not run)

def memory_rows(size: int = 512, steps=(None, 256, chunked.ALL_CHUNKS)) -> list[dict]:
    """XLA's memory analysis of one NLSA / GLA block's forward + backward on a
    size x size map (C=64, official K and R) per `chunks_per_step` (None: this backend's
    default; ALL_CHUNKS: every chunk in one step, the all-at-once layout)."""
    rows = []
    for kind in ("nlsa", "gla"):
        fmod, _ = _block_pair(kind)
        x = jax.ShapeDtypeStruct((1, size, size, 64), jnp.float32)
        params = jax.eval_shape(fmod.init, jax.random.PRNGKey(0), x)["params"]
        key = jax.random.PRNGKey(1)
        for per_step in steps:
            mod = fmod.clone(chunks_per_step=per_step)
            grad = jax.jit(jax.grad(lambda p, x, k, m=mod: jnp.sum(
                m.apply({"params": p}, x, rngs={"lsh": k})), argnums=(0, 1)))
            compiled = grad.lower(params, x, key).compile()
            rows.append({"network": kind, "what": "block_fwd_bwd_memory", "size": size,
                         "chunks_per_step": "all" if per_step == chunked.ALL_CHUNKS else
                         (per_step or "default"), "peak_bytes": memory_bytes(compiled)})
    return rows


def main(argv=None):
    """The peak, the official-size rows and the 512x512 memory rows alone (the part of
    `make bench` the official comparison needs): python experiments/roofline.py."""
    import argparse
    import logging
    import os
    import socket
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from experiments import benchmark, common
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's, = the cores)")
    ap.add_argument("--out", default=os.path.join(common.REPO, "experiments", "results",
                                                  f"roofline-{socket.gethostname()}.csv"))
    args = ap.parse_args(argv)
    common.setup_logging()
    import torch
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    info = {**common.machine_info(), "torch_threads": torch.get_num_threads()}
    peak = peak_rates(args.repeats)
    rows = official_rows(args.repeats)
    for r in rows:
        roofline(r, peak)
    mem = memory_rows()
    common.write_csv(args.out, rows + mem)
    text = "\n\n".join([f"Machine: {info}", benchmark.peak_line(peak),
                        benchmark.official_table(rows), memory_table(mem),
                        f"load average at the end: {os.getloadavg()[0]:.2f}"])
    common.write_text(os.path.splitext(args.out)[0] + ".md", text + "\n")
    logging.info("wrote %s", args.out)
    print(text)


def memory_table(rows: list[dict]) -> str:
    from experiments import common
    return ("Forward + backward of one block, XLA memory analysis (arguments + outputs + "
            "scratch):\n\n" + common.markdown_table(
                ["block", "map", "chunks per step", "MiB"],
                [[r["network"], f"{r['size']}x{r['size']}", r["chunks_per_step"],
                  f"{r['peak_bytes'] / 2**20:.0f}"] for r in rows]))


if __name__ == "__main__":
    main()
