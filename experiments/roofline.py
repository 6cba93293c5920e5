"""The official-size rows of `experiments/benchmark.py` (also on their own:
`python experiments/roofline.py`), with the roofline columns of experiments/costs.py.

* `official_rows`: the configurations the official-code comparison is about, against
  the timing-faithful transcriptions of the official modules (tests/torch_refs, run as
  the official code runs: unstable `torch.sort`, fresh random rotations, float32, torch
  with the process's threads): one NLSA (C=64, K=144, R=4) and one GLA (C=64, K=128,
  R=3) block at 64/128/256 px maps, forward and forward + backward; the NLSN
  (n_resblocks=8, n_feats=64, attn_every=8, K=144, R=4) and DLSN (n_resgroups=2,
  n_resblocks=2, n_feats=64, K=128, R=3) train steps (batch 16, LR 48x48, x2, L1 + Adam)
  and forwards at LR 128/256. JAX and torch calls alternate (A B A B ...), median.
* `memory_rows`: XLA's memory analysis of a 512x512 forward per attention step size.
"""
import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_fns, common
from experiments.costs import (ROOFLINE_HEADER, alternating_medians, counted_flops,
                               memory_bytes, peak_line, peak_rates, roofline, roofline_cells)
from jaxsr.attention import chunked

BLOCK_SIZES = (64, 128, 256)
NET_SIZES = (128, 256)
OFFICIAL = {   # network -> model overrides of configs/X.py (x2)
    "nlsn": {"n_resblocks": 8, "n_feats": 64, "attn_every": 8, "chunk_size": 144,
             "n_hashes": 4},
    "dlsn": {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 64, "chunk_size": 128,
             "n_hashes": 3},
}


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


def formulation_rows(repeats: int, sizes=BLOCK_SIZES,
                     formulations=("looped", "sorted")) -> list[dict]:
    """One NLSA / GLA block (official sizes, as `block_rows`) forward and forward +
    backward per formulation of the chunk attention (lsh.FORMULATIONS), alternating:
    which one 'auto'/'xla' should run on this CPU."""
    from jaxsr.attention import lsh
    rows = []
    for kind in ("nlsa", "gla"):
        fmod, _ = _block_pair(kind)
        for size in sizes:
            x = jnp.asarray(np.random.default_rng(3).random((1, size, size, 64), np.float32))
            rng = np.random.default_rng(0)
            params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype),
                                  jax.eval_shape(fmod.init, jax.random.PRNGKey(0), x)["params"])
            key = jax.random.PRNGKey(1)
            apply = lambda p, x, k: fmod.apply({"params": p}, x, rngs={"lsh": k})  # noqa: E731
            for what, fn in (("block_fwd", apply), ("block_fwd_bwd", jax.grad(
                    lambda p, x, k: jnp.sum(apply(p, x, k)), argnums=(0, 1)))):
                runs = {}
                for form in formulations:
                    with lsh.use_formulation(form):
                        compiled = jax.jit(fn).lower(params, x, key).compile()
                    runs[form] = (lambda c=compiled: jax.block_until_ready(c(params, x, key)))
                t = alternating_medians(runs, repeats)
                rows.append({"network": kind, "what": what, "size": size,
                             **{f"{f}_s": t[f] for f in formulations}})
    return rows


def formulation_table(rows: list[dict]) -> str:
    forms = [k[:-2] for k in rows[0] if k.endswith("_s")]
    return common.markdown_table(
        ["block", "what", "map", *[f"{f} ms" for f in forms], f"{forms[-1]}/{forms[0]}"],
        [[r["network"], r["what"], f"{r['size']}x{r['size']}",
          *[f"{r[f + '_s'] * 1e3:.1f}" for f in forms],
          f"{r[forms[-1] + '_s'] / r[forms[0] + '_s']:.2f}"] for r in rows])


def official_config(network: str):
    c = common.load_config(f"configs/{network}.py")
    for k, v in OFFICIAL[network].items():
        c.model[k] = v
    return c


def network_rows(network: str, repeats: int, sizes=NET_SIZES) -> list[dict]:
    """Train step (batch 16, LR 48x48) and forwards of the official-size network."""
    from jaxsr import models
    config = official_config(network)
    model = models.build_model(config)
    tnet = bench_fns.torch_model(network, config)
    for m in tnet.attention_layers():
        m.stable_sort = False
    base = {"network": network, "variant": "official", "scale": int(config.scale)}
    step = bench_fns.jax_train_step_fn(config, model)
    torch_step = bench_fns.torch_train_step_fn(tnet, config)
    t = alternating_medians({"jax": step["run"], "torch": torch_step}, repeats)
    p = config.train.patch_size // config.scale
    rows = [{**base, "what": "train_step", "size": p, "batch": int(config.train.batch_size),
             "jax_s": t["jax"], "torch_s": t["torch"], "flops": step["flops"],
             "peak_bytes": step["peak_bytes"]}]
    params = bench_fns.random_params(model, min(sizes))
    for size in sizes:
        fwd = bench_fns.jax_forward_fn(model, params, size)
        torch_fwd = bench_fns.torch_forward_fn(tnet, size)
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
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's, = the cores)")
    ap.add_argument("--out", default=os.path.join(common.REPO, "experiments", "results",
                                                  f"roofline-{socket.gethostname()}.csv"))
    ap.add_argument("--formulations", action="store_true",
                    help="only the looped vs sorted chunk-attention rows (CPU choice)")
    args = ap.parse_args(argv)
    common.setup_logging()
    if args.formulations:
        rows = formulation_rows(args.repeats)
        out = os.path.join(os.path.dirname(args.out),
                           f"attention_formulations-{socket.gethostname()}.md")
        text = "\n\n".join([f"Machine: {common.machine_info()}", formulation_table(rows),
                             f"load average at the end: {os.getloadavg()[0]:.2f}"])
        common.write_text(out, text + "\n")
        print(text)
        return
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
    text = "\n\n".join([f"Machine: {info}", peak_line(peak),
                        official_table(rows), memory_table(mem),
                        f"load average at the end: {os.getloadavg()[0]:.2f}"])
    common.write_text(os.path.splitext(args.out)[0] + ".md", text + "\n")
    logging.info("wrote %s", args.out)
    print(text)


def memory_table(rows: list[dict]) -> str:
    return ("Forward + backward of one block, XLA memory analysis (arguments + outputs + "
            "scratch):\n\n" + common.markdown_table(
                ["block", "map", "chunks per step", "MiB"],
                [[r["network"], f"{r['size']}x{r['size']}", r["chunks_per_step"],
                  f"{r['peak_bytes'] / 2**20:.0f}"] for r in rows]))


if __name__ == "__main__":
    main()


def official_table(rows: list[dict]) -> str:
    """The official-size rows (roofline.official_rows): JAX vs the official modules."""
    body = []
    for r in rows:
        if r.get("variant") != "official":
            continue
        body.append([r["network"], r["what"], f"{r['batch']}x{r['size']}x{r['size']}",
                     f"{r['jax_s'] * 1000:.1f}", f"{r['torch_s'] * 1000:.1f}",
                     f"{r['ratio']:.2f}",
                     "-" if not r.get("flops") else f"{r['flops'] / 1e9:.2f}",
                     *roofline_cells(r),
                     "-" if not r.get("peak_bytes") else f"{r['peak_bytes'] / 2**20:.0f}"])
    if not body:
        return ""
    return ("Official sizes vs the official modules (tests/torch_refs, unstable sort), "
            "JAX and torch alternating, median:\n\n" + common.markdown_table(
                ["network", "what", "input (NxHxW)", "JAX ms", "official ms",
                 "official/JAX", *ROOFLINE_HEADER, "peak MiB"], body))
