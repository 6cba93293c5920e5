"""Performance of each network, JAX vs the project's PyTorch references, on this machine.

  python experiments/benchmark.py --preset cpu      # `make bench`: < 15 min on 2 cores
  python experiments/benchmark.py --preset gpu      # paper configs at every size, train steps
  python experiments/benchmark.py --preset cpu --models dlsn nlsn --out /tmp/b.csv

Per network and config variant ('paper' and 'small' = configs/X.py and configs/X.py:small):
parameters; FLOPs per LR pixel (XLA cost analysis of the compiled forward, per input size:
hash attention's cost depends on it); compile time; forward latency (batch 1, median of
`repeats`) and throughput (LR megapixels/s) at 64/128/256 px LR inputs; train-step time at
the config's patch and batch size (the 'paper' variant's is the paper's); peak memory (XLA
memory analysis of the compiled executable; the device counter on GPU/TPU). The same
forward and train step run on the PyTorch reference (tests/torch_refs, random weights,
Adam + L1 on a fixed batch, LR given) in the same process; `ratio` = torch time / JAX
time (> 1: JAX is faster). For the attention models the attention block alone is timed
too (rows `attention_fwd` / `attention_train`, 128 px LR features), which splits the
network time into attention and the rest (convolutions): the `share` column.

The JAX train step is `objective.train_step` of the 'sr' objective (includes the on-device
bicubic LR synthesis), jitted with the state donated, as jaxsr.train runs it.
Roofline (experiments/roofline.py): the run starts by measuring the machine's peak (a large
float32 matmul and convolution; on GPU/TPU also bf16) and the official-size rows (NLSA /
GLA blocks, NLSN / DLSN train steps and forwards against the official modules' timing
twins; `--no-official` skips them); every row with FLOPs (XLA cost analysis, counted with
all attention chunks in one step) gets GFLOP/s and its fraction of those peaks.
Output: a CSV (default experiments/results/benchmark-<host>.csv) and a markdown table on
stdout (also written beside the CSV as .md).
"""
import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import common, roofline  # noqa: E402
from experiments.bench_fns import (  # noqa: E402
    jax_forward, jax_train_step, median_time, random_params, torch_forward, torch_model,
    torch_train_step, train_state, variant_config)
from experiments.costs import ROOFLINE_HEADER, peak_line, roofline_cells  # noqa: E402
from jaxsr import inference, models, objectives, summary  # noqa: E402

NETWORKS = ("edsr", "nlsn", "dlsn", "rcan", "fsrcnn")
PRESETS = {
    # variant -> (forward sizes, repeats, train step?)
    "cpu": {"small": ((64, 128, 256), 5, True), "paper": ((64, 128), 1, False)},
    "gpu": {"small": ((64, 128, 256), 20, True), "paper": ((64, 128, 256), 10, True)},
    "tiny": {"small": ((16,), 1, True)},
}
ATTN_SIZE = 128
OFFICIAL_REPEATS = {"cpu": 5, "gpu": 20}


def attention_pair(network: str, config):
    """(flax module, torch module, count in the network) of the network's attention."""
    from jaxsr.attention import GlobalLearnableAttention, NonLocalSparseAttention
    from tests.torch_refs import lsh as tlsh
    m = config.model
    if network == "dlsn":
        kw = dict(chunk_size=m.chunk_size, n_hashes=m.n_hashes, reduction=m.get("reduction", 4))
        return (GlobalLearnableAttention(**kw), tlsh.GLA(channels=m.n_feats, **kw),
                m.n_resgroups)
    if network == "nlsn":
        kw = dict(chunk_size=m.chunk_size, n_hashes=m.n_hashes, reduction=m.get("reduction", 4))
        return (NonLocalSparseAttention(res_scale=m.res_scale, **kw),
                tlsh.NonLocalSparseAttention(channels=m.n_feats, res_scale=m.res_scale, **kw),
                1 + m.n_resblocks // m.get("attn_every", 8))
    return None


def attention_rows(network: str, config, size: int, repeats: int) -> list[dict]:
    pair = attention_pair(network, config)
    if pair is None:
        return []
    import torch
    fmod, tmod, count = pair
    c = config.model.n_feats
    x = jnp.asarray(np.random.default_rng(3).random((1, size, size, c), np.float32))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype),
                          jax.eval_shape(fmod.init, jax.random.PRNGKey(0), x)["params"])
    fwd = jax.jit(lambda p, x: fmod.apply({"params": p}, x))
    grad = jax.jit(jax.grad(lambda p, x, k: jnp.sum(
        fmod.apply({"params": p}, x, rngs={"lsh": k})), argnums=(0, 1)))
    key = jax.random.PRNGKey(1)
    rows = []
    jf = median_time(lambda: jax.block_until_ready(fwd(params, x)), repeats)
    jt = median_time(lambda: jax.block_until_ready(grad(params, x, key)), repeats)
    tx = torch.rand(1, c, size, size)
    with torch.no_grad():
        tf = median_time(lambda: tmod(tx), repeats)
    txg = tx.clone().requires_grad_(True)
    tt = median_time(lambda: tmod(txg).sum().backward(), repeats)
    for what, j, t in (("attention_fwd", jf, tf), ("attention_train", jt, tt)):
        rows.append({"what": what, "size": size, "batch": 1, "attention_layers": count,
                     "jax_s": j, "torch_s": t})
    return rows


# ---------------------------------------------------------------------------------------
# Profiles (common.SPLIT: convolutions / attention convs / attention core / other)

def profile_rows(config, model, params, tnet, size: int, train: bool) -> list[dict]:
    """Op-time shares of the forward (JAX and torch) and of the JAX train step."""
    root, attn = type(model).__name__, common.attention_paths(params)
    fn = inference.bind(model, params)
    x = jnp.asarray(np.random.default_rng(1).random((1, size, size, 3), np.float32))
    compiled = fn.lower(jax.ShapeDtypeStruct(x.shape, x.dtype)).compile()
    row = {"what": "profile_fwd", "size": size, "batch": 1, "jax_s": None}
    row.update(_prefixed("jax", common.jax_split(
        compiled, lambda: jax.block_until_ready(compiled(fn.params, x)), root, attn)))
    if tnet is not None and hasattr(tnet, "attention_layers"):
        import torch
        tx = torch.rand(1, 3, size, size)
        tnet.eval()

        def run():
            with torch.no_grad():
                tnet(tx)
        row.update(_prefixed("torch", common.torch_split(tnet, tnet.attention_layers(), run)))
    rows = [row]
    if train:
        objective = objectives.make(config, model)
        b, p = config.train.batch_size, config.train.patch_size
        hr = jnp.asarray(np.random.default_rng(2).integers(0, 256, (b, p, p, 3), np.uint8))
        box = [train_state(objective, model, hr, p // config.scale)]
        step = jax.jit(objective.train_step, donate_argnums=0)
        compiled = step.lower(box[0], hr, jax.random.PRNGKey(1)).compile()

        def one():
            box[0], metrics = compiled(box[0], hr, jax.random.PRNGKey(1))
            jax.block_until_ready(metrics["loss"])
        rows.append({"what": "profile_train", "size": p // config.scale, "batch": b,
                     "jax_s": None, **_prefixed("jax", common.jax_split(compiled, one, root, attn))})
    return rows


def _prefixed(prefix: str, shares: dict) -> dict:
    return {f"{prefix}_{k.replace(' ', '_')}": v for k, v in shares.items()}


# ---------------------------------------------------------------------------------------
# The table

def bench_variant(network: str, variant: str, sizes, repeats: int, train_step: bool,
                  tiny: bool = False) -> list[dict]:
    import torch
    config = variant_config(network, variant, tiny)
    model = models.build_model(config)
    params = random_params(model, min(sizes))
    base = {"network": network, "variant": variant, "scale": int(config.scale),
            "params": summary.count_params(params)}
    tnet = torch_model(network, config)
    rows = []
    for size in sizes:
        r = {**base, "what": "forward", "size": size, "batch": 1,
             **jax_forward(model, params, size, repeats)}
        r["torch_s"] = torch_forward(tnet, size, repeats) if tnet is not None else None
        r["mpx_per_s"] = size * size / r["jax_s"] / 1e6
        rows.append(r)
    if train_step:
        p = config.train.patch_size // config.scale
        r = {**base, "what": "train_step", "size": p, "batch": int(config.train.batch_size),
             **jax_train_step(config, model, repeats)}
        r["torch_s"] = torch_train_step(tnet, config, repeats) if tnet is not None else None
        rows.append(r)
        if variant == "small":
            size = min(ATTN_SIZE, max(sizes))
            rows += [{**base, **a} for a in attention_rows(network, config, size, repeats)]
    if common.attention_paths(params):
        size = min(ATTN_SIZE, max(sizes))
        rows += [{**base, **r} for r in
                 profile_rows(config, model, params, tnet, size, train_step and variant == "small")]
    for r in rows:
        r["ratio"] = r["torch_s"] / r["jax_s"] if r.get("torch_s") and r.get("jax_s") else None
    add_shares(rows)
    del torch
    return rows


def add_shares(rows: list[dict]) -> None:
    """share = attention layers x one attention block / the network, per framework."""
    net = {("fwd", r["size"]): r for r in rows if r["what"] == "forward"}
    for r in rows:
        if r["what"] != "attention_fwd" or ("fwd", r["size"]) not in net:
            continue
        whole = net[("fwd", r["size"])]
        r["jax_share"] = r["attention_layers"] * r["jax_s"] / whole["jax_s"]
        if whole.get("torch_s"):
            r["torch_share"] = r["attention_layers"] * r["torch_s"] / whole["torch_s"]


def markdown(rows: list[dict], peak: dict | None = None) -> str:
    def ms(v):
        return "-" if v is None else f"{v * 1000:.1f}"
    body = []
    for r in rows:
        if r["what"].startswith("profile") or r.get("variant") == "official":
            continue
        what = r["what"] + (f" (x{r['attention_layers']})" if "attention_layers" in r else "")
        shape = f"{r['batch']}x{r['size']}x{r['size']}"
        share = ""
        if "jax_share" in r:
            share = f"{r['jax_share']:.0%} / " + (f"{r['torch_share']:.0%}" if "torch_share" in r else "-")
        body.append([r["network"], r["variant"], f"{r['params']:,}", what, shape,
                     "-" if not r.get("flops_per_px") else f"{r['flops_per_px'] / 1e6:.2f}",
                     "-" if "jax_compile_s" not in r else f"{r['jax_compile_s']:.1f}",
                     ms(r["jax_s"]), ms(r.get("torch_s")),
                     "-" if not r.get("ratio") else f"{r['ratio']:.2f}",
                     "-" if not r.get("peak_bytes") else f"{r['peak_bytes'] / 2**20:.0f}", share,
                     *roofline_cells(r)])
    table = common.markdown_table(
        ["network", "config", "params", "what", "input (NxHxW LR)", "MFLOP/px", "compile s",
         "JAX ms", "torch ms", "torch/JAX", "peak MiB", "attention share JAX / torch",
         *ROOFLINE_HEADER[1:]], body)
    return "\n\n".join(t for t in (peak_line(peak), roofline.official_table(rows), table,
                                    split_table(rows)) if t)


def split_table(rows: list[dict]) -> str:
    """Op-time shares from the profiles: JAX (XLA:CPU thunks) / torch (self CPU time)."""
    body = []
    for r in rows:
        if not r["what"].startswith("profile"):
            continue
        cells = []
        for k in common.SPLIT:
            key = k.replace(" ", "_")
            j, t = r.get(f"jax_{key}"), r.get(f"torch_{key}")
            cells.append(("-" if j is None else f"{j:.0%}")
                         + (f" / {t:.0%}" if t is not None else ""))
        body.append([r["network"], r["variant"], r["what"][len("profile_"):],
                     f"{r['batch']}x{r['size']}x{r['size']}",
                     f"{r.get('jax_coverage', 0):.0%}"] + cells)
    if not body:
        return ""
    return ("Where the time goes (share of op time, JAX / torch; torch: forward only). "
            "'traced' is the JAX op time the profiler saw / wall time; below "
            f"{common.MIN_COVERAGE:.0%} (Eigen convolutions run outside their trace "
            "events) the JAX shares are not given ('-'):\n\n"
            + common.markdown_table(["network", "config", "pass", "input", "traced"]
                                    + list(common.SPLIT), body))


def run(preset: str, networks, out: str, official: bool = True) -> list[dict]:
    import torch
    info = common.machine_info()
    info["torch"], info["torch_threads"] = torch.__version__, torch.get_num_threads()
    logging.info("machine: %s", info)
    peak = roofline.peak_rates(PRESETS[preset]["small"][1])
    info.update({f"peak_{k}_gflops": round(v, 1) for k, v in peak.items()})
    logging.info("peak: %s", peak)
    rows = []

    def finish(got):
        for r in got:
            roofline.roofline(r, peak)
        rows.extend({"host": info["host"], **r} for r in got)
        common.write_csv(out, rows)              # partial results survive an interruption
    if official and preset != "tiny":
        finish(roofline.official_rows(OFFICIAL_REPEATS[preset]))
    for network in networks:
        for variant, (sizes, repeats, train_step) in PRESETS[preset].items():
            t0 = time.perf_counter()
            got = bench_variant(network, variant, sizes, repeats, train_step, preset == "tiny")
            logging.info("%s/%s done in %.0f s", network, variant, time.perf_counter() - t0)
            finish(got)
    table = markdown(rows, peak)
    common.write_text(os.path.splitext(out)[0] + ".md",
                      f"Machine: {info}\n\n{table}\n")
    print(table)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--models", nargs="*", default=list(NETWORKS), choices=NETWORKS)
    ap.add_argument("--no-official", action="store_true",
                    help="skip the official-size rows (roofline.official_rows)")
    ap.add_argument("--out", default=None, help="CSV path (default: "
                    "experiments/results/benchmark-<host>.csv)")
    args = ap.parse_args(argv)
    common.setup_logging()
    import socket
    out = args.out or os.path.join(common.REPO, "experiments", "results",
                                   f"benchmark-{socket.gethostname()}.csv")
    run(args.preset, args.models, out, official=not args.no_official)


if __name__ == "__main__":
    main()
