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
import importlib
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import common, roofline  # noqa: E402
from experiments.roofline import flops_of, memory_bytes  # noqa: E402,F401
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


# ---------------------------------------------------------------------------------------
# Configs and models

def variant_config(network: str, variant: str, tiny: bool = False):
    c = common.load_config(f"configs/{network}.py" + (":small" if variant == "small" else ""))
    if tiny:   # the smoke test: the smallest thing that still has every block
        for k, v in {"n_feats": 8, "n_resblocks": 1, "n_resgroups": 1, "d": 8, "s": 4,
                     "m": 1, "chunk_size": 16}.items():
            if k in c.model:
                c.model[k] = v
        c.train.batch_size, c.train.patch_size = 2, 16 * c.scale
    return c


def random_params(model, lr_side: int, seed: int = 0):
    """N(0, 0.02) weights on the eval_shape structure (no init compile: fast for 70M)."""
    x = jax.ShapeDtypeStruct((1, lr_side, lr_side, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0),
                                                "lsh": jax.random.PRNGKey(1)},
                                               jnp.zeros(x.shape), train=False))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype), shapes)


def torch_model(network: str, config):
    """The tests/torch_refs twin of the configured network (None when there is none)."""
    m, s = config.model, config.scale
    try:
        ref = importlib.import_module(f"tests.torch_refs.{network}")
    except ImportError:
        return None
    if network == "edsr":
        return ref.EDSR(s, m.n_resblocks, m.n_feats, m.res_scale)
    if network == "nlsn":
        net = ref.NLSN(s, m.n_resblocks, m.n_feats, m.res_scale, m.chunk_size, m.n_hashes)
        return _nlsn_attn_every(net, m.get("attn_every", 8))
    if network == "dlsn":
        return ref.DLSN(s, m.n_resgroups, m.n_resblocks, m.n_feats, m.res_scale,
                        m.chunk_size, m.n_hashes, m.get("reduction", 4))
    if network == "rcan":
        return ref.RCAN(s, m.n_resgroups, m.n_resblocks, m.n_feats, m.reduction)
    if network == "fsrcnn":
        return _FSRCNNRGB(ref.FSRCNN(s, d=m.d, s=m.s, m=m.m), s)
    return None


def _nlsn_attn_every(net, every: int):
    """The reference NLSN puts an NLSA after every 8th block; rebuild its body with the
    config's `attn_every` (the :small config uses 2) from the same blocks."""
    import torch
    if every == 8:
        return net
    blocks = [b for b in net.body if b.__class__.__name__ == "ResBlock"]
    nlsa = net.attention_layers()[0]
    body = [copy_module(nlsa)]
    for i, b in enumerate(blocks):
        body.append(b)
        if (i + 1) % every == 0:
            body.append(copy_module(nlsa))
    net.body = torch.nn.Sequential(*body, net.body[-1])
    return net


def copy_module(m):
    import copy
    return copy.deepcopy(m)


def _FSRCNNRGB(y_net, scale: int):  # noqa: N802 (a torch module factory)
    """RGB in/out around the Y network, the work jaxsr's FSRCNN does: YCbCr, chroma by
    torch bicubic (not MATLAB's, which only matters for values, not for timing)."""
    import torch
    from jaxsr.models.fsrcnn import RGB2YCC, YCC_OFFSET

    class FSRCNNRGB(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = y_net
            self.register_buffer("fwd", torch.tensor(RGB2YCC, dtype=torch.float32))
            self.register_buffer("inv", torch.tensor(np.linalg.inv(RGB2YCC), dtype=torch.float32))
            self.register_buffer("off", torch.tensor(YCC_OFFSET, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x):
            ycc = torch.einsum("oc,nchw->nohw", self.fwd, x) + self.off
            cbcr = torch.nn.functional.interpolate(ycc[:, 1:], scale_factor=scale,
                                                   mode="bicubic", align_corners=False)
            out = torch.cat([self.net(ycc[:, :1]), cbcr], 1) - self.off
            return torch.einsum("oc,nchw->nohw", self.inv, out)
    return FSRCNNRGB()


# ---------------------------------------------------------------------------------------
# Timing

def median_time(fn, repeats: int) -> float:
    fn()                                             # warm-up (and torch allocator)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def jax_forward_fn(model, params, size: int) -> dict:
    """The compiled batch-1 forward at size x size: {'run', 'compile_s', 'flops',
    'peak_bytes'} (FLOPs counted as roofline.counted_flops does)."""
    fn = inference.bind(model, params)
    spec = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    t0 = time.perf_counter()
    compiled = fn.lower(spec).compile()
    compile_s = time.perf_counter() - t0
    x = jnp.asarray(np.random.default_rng(1).random(spec.shape, np.float32))
    p = fn.params
    return {"run": lambda: jax.block_until_ready(compiled(p, x)), "compile_s": compile_s,
            "flops": roofline.counted_flops(fn, spec), "peak_bytes": memory_bytes(compiled)}


def jax_forward(model, params, size: int, repeats: int) -> dict:
    f = jax_forward_fn(model, params, size)
    return {"jax_s": median_time(f["run"], repeats), "jax_compile_s": f["compile_s"],
            "peak_bytes": f["peak_bytes"], "flops": f["flops"],
            "flops_per_px": f["flops"] / size ** 2 if f["flops"] else None}


def jax_train_step_fn(config, model) -> dict:
    """One train step of the 'sr' objective, jitted with the state donated, as
    jaxsr.train runs it: {'run', 'compile_s', 'flops', 'peak_bytes'}."""
    objective = objectives.make(config, model)
    b, p = config.train.batch_size, config.train.patch_size
    hr = jnp.asarray(np.random.default_rng(2).integers(0, 256, (b, p, p, 3), np.uint8))
    state = train_state(objective, model, hr, p // config.scale)
    step = jax.jit(objective.train_step, donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, hr, jax.random.PRNGKey(1)).compile()
    compile_s = time.perf_counter() - t0
    flops = roofline.counted_flops(step, state, hr, jax.random.PRNGKey(1))
    box = [state]

    def one():
        box[0], metrics = compiled(box[0], hr, jax.random.PRNGKey(1))
        jax.block_until_ready(metrics["loss"])
    return {"run": one, "compile_s": compile_s, "flops": flops,
            "peak_bytes": memory_bytes(compiled)}


def jax_train_step(config, model, repeats: int) -> dict:
    f = jax_train_step_fn(config, model)
    return {"jax_s": median_time(f["run"], repeats), "jax_compile_s": f["compile_s"],
            "peak_bytes": f["peak_bytes"], "flops": f["flops"]}


def train_state(objective, model, hr, lr_side: int):
    """The objective's initial state, with random params and `objective.tx.init` when the
    structure matches `init_state`'s (skips compiling the param init: on XLA:CPU the
    partitionable-threefry init of a network takes longer to compile than its train step);
    otherwise `init_state` itself."""
    want = jax.eval_shape(objective.init_state, jax.random.PRNGKey(0), hr)
    tx = getattr(objective, "tx", None)
    if tx is not None and set(want) == {"step", "params", "opt_state"}:
        params = jax.tree.map(jnp.asarray, random_params(model, lr_side))
        state = {"step": jnp.zeros((), jnp.int32), "params": params,
                 "opt_state": jax.jit(tx.init)(params)}
        if (jax.tree.structure(state) == jax.tree.structure(want) and
                jax.tree.map(jnp.shape, state) == jax.tree.map(lambda s: s.shape, want)):
            return state
    return jax.jit(objective.init_state)(jax.random.PRNGKey(0), hr)


def torch_forward_fn(net, size: int):
    import torch
    net.eval()
    x = torch.rand(1, 3, size, size)

    def run():
        with torch.no_grad():
            net(x)
    return run


def torch_forward(net, size: int, repeats: int) -> float:
    return median_time(torch_forward_fn(net, size), repeats)


def torch_train_step_fn(net, config):
    """Adam + L1 on a fixed batch (LR given), the torch twin of jax_train_step_fn."""
    import torch
    net.train()
    b, p, s = config.train.batch_size, config.train.patch_size, config.scale
    lr, hr = torch.rand(b, 3, p // s, p // s), torch.rand(b, 3, p, p)
    opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=1e-4)

    def one():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(net(lr), hr).backward()
        opt.step()
    return one


def torch_train_step(net, config, repeats: int) -> float:
    return median_time(torch_train_step_fn(net, config), repeats)


# ---------------------------------------------------------------------------------------
# Attention alone (where the time goes)

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


def roofline_cells(r: dict) -> list[str]:
    """GFLOP/s and % of the measured matmul / conv peaks (roofline.roofline)."""
    if "gflop_per_s" not in r:
        return ["-", "-"]
    fracs = [f"{r[k]:.0%}" for k in ("peak_frac_matmul_f32", "peak_frac_conv_f32") if k in r]
    return [f"{r['gflop_per_s']:.1f}", " / ".join(fracs)]


ROOFLINE_HEADER = ["GFLOP", "GFLOP/s", "% peak mm / conv"]


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
    return "\n\n".join(t for t in (peak_line(peak), official_table(rows), table,
                                    split_table(rows)) if t)


def peak_line(peak: dict | None) -> str:
    if not peak:
        return ""
    return ("Measured peak (this run, all cores): " +
            ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()))


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
