"""Per-chip memory, FLOPs and roofline of the paper configs on TPU slices, compiled ahead
of time on this CPU-only machine (`jaxsr.aot`, the code of `--mode compile`).

  python experiments/aot_table.py                         # every row (hours on 2 cores)
  python experiments/aot_table.py --models dlsn --targets v5litepod-8 --dtypes float32
  python experiments/aot_table.py --fit_batch --models nlsn --targets v5litepod-8
  python experiments/aot_table.py --table                 # markdown from the results

Each row (config, target, compute dtype) compiles the training step at the config's
paper batch and patch and the evaluation forward of one LR image per chip of side
1024 // scale (Urban100 images are ~1024 px on the long side: 512x512 LR at x2). Rows are
appended to experiments/results/aot_table.jsonl as they finish; rows already there are
skipped, so a partial run can be continued. `--fit_batch`: the largest per-chip batch
whose train step compiles within the chip (doubling, then bisection; each probe is one
compile). `--attention`: the share of FLOPs and bytes of the attention modules, from the
cost analysis of one attention module compiled alone at the network's feature-map shape
(per chip, forward + backward as the train step runs it) times their number.
`--modules`: one NLSA / GLA alone per formulation of the chunk attention (today's
looped path, the scatter-free sorted path, the Pallas kernels), with scatter counts:
  python experiments/aot_table.py --modules --targets v5litepod-8 v4-8
  python experiments/aot_table.py --table --out experiments/results/aot_attention_paths.jsonl
"""
import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import hlo_bytes  # noqa: E402
from jaxsr import aot, config_util  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "aot_table.jsonl")
MODULE_RESULTS = os.path.join(os.path.dirname(RESULTS), "aot_attention_paths.jsonl")
PAPER = {"nlsn": ("configs/nlsn.py", "configs/nlsn.py:x4"),
         "dlsn": ("configs/dlsn.py", "configs/dlsn.py:x4"),
         "nlcunet": ("configs/nlcunet.py:x2", "configs/nlcunet.py"),
         "lnln": ("configs/lnln.py", "configs/lnln.py:x4")}
TARGETS = ("v4-8", "v5litepod-8", "v6e-8", "v4-32")
# --all_configs: every config file, at its small (2-core CPU) size so that the whole set
# compiles in minutes: it shows the TPU compiler takes every model's ops.
ALL_CONFIGS = ("configs/bicubic.py:small", "configs/degradations.py:bd,small",
               "configs/dlsn.py:small", "configs/edsr.py:small", "configs/fsrcnn.py:small",
               "configs/kenet.py:small", "configs/kenet_usrnet.py:small",
               "configs/lnln.py:small", "configs/nlcunet.py:small",
               "configs/nlcunet_gan.py:small", "configs/nlsn.py:small", "configs/rcan.py:small")
DTYPES = ("float32", "bfloat16")


def load(spec: str, dtype: str, per_chip: int | None = None, chips: int | None = None):
    c = config_util.load_config_file(spec)
    if "loss" in c and "vgg19_random" in c.loss:
        c.loss.vgg19_random = True      # shapes only: no VGG weights needed to compile
    c.train.compute_dtype = dtype
    if per_chip is not None:
        c.train.batch_size = per_chip * chips
    return c


def compile_row(spec: str, target: str, dtype: str) -> dict:
    c = load(spec, dtype)
    t0 = time.perf_counter()
    res = aot.run_compile(c, target, eval_lr_size=1024 // c.scale, check=False)
    return {"config": spec, "target": target, "dtype": dtype, "result": res,
            "seconds": round(time.perf_counter() - t0, 1)}


def config_check(spec: str, target: str, dtype: str) -> dict:
    """--all_configs: both programs of a small config (eval LR 64) for `target`."""
    from jaxsr import accelerators
    c = load(spec, dtype)
    chips, note = accelerators.parse_target(target).num_chips, {}
    if c.train.batch_size % chips:      # --mode compile refuses it: here the next multiple
        note = {"batch_raised": f"{c.train.batch_size} -> {-(-c.train.batch_size // chips) * chips}"}
        c.train.batch_size = -(-c.train.batch_size // chips) * chips
    t0 = time.perf_counter()
    try:
        res = dict(aot.run_compile(c, target, eval_lr_size=64, check=False), **note)
    except Exception as e:      # noqa: BLE001 -- recorded: which config fails and why
        res = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
    return {"config": spec, "target": target, "dtype": dtype, "result": res,
            "seconds": round(time.perf_counter() - t0, 1)}


def largest_batch(spec: str, target: str, dtype: str, limit: int = 512) -> dict:
    """Largest per-chip batch whose train step fits (`aot.fit_batch`: one compile per probe)."""
    found = aot.fit_batch(load(spec, dtype), target, limit=limit)
    return {"config": spec, "target": target, "dtype": dtype,
            "max_per_chip_batch": found["largest_per_chip_batch"], "probe_limit": limit}


# Attention modules of the networks whose attention runs at the LR feature map
# (NLSN: NLSA at body_0 and after every attn_every ResBlocks; DLSN: one GLA per GLAFFM).
def attention_modules(c):
    from jaxsr.attention import GlobalLearnableAttention, NonLocalSparseAttention
    m = c.model
    if m.name == "nlsn":
        return (NonLocalSparseAttention(chunk_size=m.chunk_size, n_hashes=m.n_hashes,
                                        reduction=m.reduction, res_scale=m.res_scale),
                m.n_resblocks // m.get("attn_every", 8) + 1)
    if m.name == "dlsn":
        return (GlobalLearnableAttention(chunk_size=m.chunk_size, n_hashes=m.n_hashes,
                                         reduction=m.reduction), m.n_resgroups)
    return None, 0


def module_costs(module, shapes: dict, target: str, dtype: str,
                 with_scatters: bool = False) -> dict:
    """Per-chip cost analysis of one attention module compiled alone for `target`:
    {'train_step': forward + backward (grads of params and input), 'eval_forward': forward}
    at the given global input shapes (split over the chips); with_scatters: plus the
    number of scatter ops in each compiled program."""
    import jax
    import jax.numpy as jnp
    from jaxsr import accelerators, precision, target_platform, train
    devices = aot.target_devices(accelerators.parse_target(target))
    repl, data = train.shardings(devices)
    cdt = precision.resolve(dtype)
    out = {}
    # the mesh: Mosaic kernels (formulation 'pallas') shard_map themselves over it
    with target_platform.tracing_for("tpu"), \
            jax.sharding.use_abstract_mesh(data.mesh.abstract_mesh):
        # the parameters depend on the channels only: any program's input shape inits them
        x0 = jax.ShapeDtypeStruct((1,) + next(iter(shapes.values()))[1:], jnp.float32)
        params = jax.eval_shape(lambda x: module.init({"params": jax.random.PRNGKey(0),
                                                       "lsh": jax.random.PRNGKey(1)}, x), x0)
        params = train.abstract_like(params, repl)
        rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl)

        def fwd(p, x, r):
            return jnp.mean(precision.apply(module, p["params"], x, cdt, rngs={"lsh": r}))

        for name, shape in shapes.items():
            x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=data)
            fn = jax.jit(jax.grad(fwd, argnums=(0, 1)) if name == "train_step" else fwd)
            compiled = fn.lower(params, x, rng).compile()
            out[name] = aot.cost_report(compiled)
            if with_scatters:      # and where the bytes go (an estimate, hlo_bytes)
                text = compiled.as_text()
                out[name]["scatters"] = len(re.findall(r"\bscatter\(", text))
                out[name]["bytes_by_category"] = hlo_bytes.by_category(text)
    return out


# --modules: one attention module of each paper network alone, 256 channels, at the paper
# training input (batch 16 of 48x48 LR: 2 per chip on v5e-8) forward + backward, and
# GLA's eval forward of one 512x512 LR image per chip, per formulation of the chunk
# attention (lsh.FORMULATIONS: 'looped' is today's path, 'sorted' the scatter-free one).
MODULES = {"NLSA K144 R4": ("nlsa", 144, 4), "GLA K128 R3": ("gla", 128, 3)}
MODULE_TRAIN_INPUT = (16, 48, 48, 256)
MODULE_EVAL_SIDE = 512


def module_row(name: str, target: str, dtype: str, formulation: str) -> dict:
    from jaxsr import accelerators
    from jaxsr.attention import GlobalLearnableAttention, NonLocalSparseAttention, lsh
    kind, k, r = MODULES[name]
    cls = NonLocalSparseAttention if kind == "nlsa" else GlobalLearnableAttention
    module = cls(chunk_size=k, n_hashes=r, reduction=4, res_scale=1.0)
    t = accelerators.parse_target(target)
    shapes = {"train_step": MODULE_TRAIN_INPUT}
    if kind == "gla":
        shapes["eval_forward"] = (t.num_chips, MODULE_EVAL_SIDE, MODULE_EVAL_SIDE, 256)
    t0 = time.perf_counter()
    with lsh.use_formulation(formulation):
        costs = module_costs(module, shapes, target, dtype, with_scatters=True)
    row = {"kind": "module", "config": name, "target": target, "dtype": dtype,
           "formulation": formulation, "seconds": round(time.perf_counter() - t0, 1)}
    for program, cost in costs.items():
        row[program] = dict(cost, shape=shapes[program], roofline=aot.roofline(cost, t.chip))
    return row


def attention_share(spec: str, target: str, dtype: str) -> dict:
    """FLOPs and bytes of the network's attention modules (one compiled alone, times their
    number) per chip, to set against the whole train step / eval forward."""
    from jaxsr import accelerators
    c = load(spec, dtype)
    module, count = attention_modules(c)
    row = {"config": spec, "target": target, "dtype": dtype, "modules": count}
    if module is None:
        return dict(row, attention="not split (attention at several resolutions)")
    chips = accelerators.parse_target(target).num_chips
    lr, ev, f = c.train.patch_size // c.scale, 1024 // c.scale, c.model.n_feats
    costs = module_costs(module, {"train_step": (c.train.batch_size, lr, lr, f),
                                  "eval_forward": (chips, ev, ev, f)}, target, dtype)
    for name, cost in costs.items():
        row[name] = {k: v * count for k, v in cost.items()}
    return row


def chunk_cost(target: str, dtype: str, sizes=(128, 144, 192, 256)) -> list:
    """NLSN's NLSA (256 ch, 4 rounds) on its paper training input (batch 16 of 48x48 LR)
    with chunk sizes around the paper's 144: FLOPs and the TPU cost model's time, to see
    what a chunk that is not a multiple of the 128-wide MXU costs."""
    from jaxsr.attention import NonLocalSparseAttention
    rows = []
    for k in sizes:
        m = NonLocalSparseAttention(chunk_size=k, n_hashes=4, reduction=4, res_scale=1.0)
        cost = module_costs(m, {"train_step": (16, 48, 48, 256)}, target, dtype)["train_step"]
        rows.append({"kind": "chunk_cost", "config": f"NLSA K={k}", "target": target,
                     "dtype": dtype, "chunk_size": k, **cost})
    return rows


def done_keys(path: str) -> set:
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r.get("kind", "row"), r["config"], r["target"], r["dtype"])
            + ((r["formulation"],) if "formulation" in r else ()) for r in rows}


def append(path: str, row: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row)[:400], flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(PAPER), choices=list(PAPER))
    ap.add_argument("--scales", nargs="+", default=["x2", "x4"], choices=["x2", "x4"])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--fit_batch", action="store_true", help="largest per-chip batch")
    ap.add_argument("--attention", action="store_true", help="attention share of the costs")
    ap.add_argument("--chunk_cost", action="store_true",
                    help="NLSA train cost for chunk sizes 128/144/192/256 (--targets)")
    ap.add_argument("--all_configs", action="store_true",
                    help="every configs/*.py at its small size (--targets, float32)")
    ap.add_argument("--modules", nargs="*", choices=list(MODULES), default=None,
                    help="one NLSA / GLA alone per --formulations (default: both modules)"
                         f"; rows to {os.path.relpath(MODULE_RESULTS)} unless --out")
    ap.add_argument("--formulations", nargs="+", default=["looped", "sorted"],
                    help="lsh.FORMULATIONS for --modules ('looped' = today's path)")
    ap.add_argument("--out", default=None, help=f"default {os.path.relpath(RESULTS)}")
    ap.add_argument("--table", action="store_true", help="print the markdown table and exit")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = MODULE_RESULTS if args.modules is not None else RESULTS
    if args.table:
        print(markdown(args.out))
        return
    aot.prepare_host()
    kind = ("fit_batch" if args.fit_batch else "attention" if args.attention
            else "config_check" if args.all_configs else "row")
    work = {"row": compile_row, "fit_batch": largest_batch, "attention": attention_share,
            "config_check": config_check}[kind]
    done = done_keys(args.out)
    if args.modules is not None:
        for name in args.modules or list(MODULES):
            for target in args.targets:
                for dtype in args.dtypes:
                    for form in args.formulations:
                        if ("module", name, target, dtype, form) not in done:
                            append(args.out, module_row(name, target, dtype, form))
        return
    if args.chunk_cost:
        for target in args.targets:
            for dtype in args.dtypes:
                for row in chunk_cost(target, dtype):
                    append(args.out, row)
        return
    if kind == "config_check":
        for spec in ALL_CONFIGS:
            for target in args.targets:
                if (kind, spec, target, "float32") not in done:
                    append(args.out, dict(config_check(spec, target, "float32"), kind=kind))
        return
    for model in args.models:
        for scale in args.scales:
            spec = PAPER[model][0 if scale == "x2" else 1]
            for target in args.targets:
                for dtype in args.dtypes:
                    if (kind, spec, target, dtype) in done:
                        continue
                    row = work(spec, target, dtype)
                    append(args.out, dict(row, kind=kind))


def _mib_gflop(p: dict | None) -> str:
    if p is None:
        return "-"
    if "memory" not in p:
        return "does not fit"
    flops = p["cost"]["flops"]
    return (f"{p['memory']['total_bytes'] / 2**20:.0f} MiB, "
            + (f"{flops / 1e9:.1f} GFLOP" if flops is not None else "no cost analysis"))


def config_markdown(rows: list) -> str:
    """--all_configs rows: per chip train step / eval forward memory and FLOPs."""
    lines = ["| config | target | train step per chip | eval forward per chip (LR 64) "
             "| compile s (train, eval) |", "|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        if "error" in res:
            lines.append(f"| {r['config']} | {r['target']} | error: {res['error'][:120]} | | |")
            continue
        secs = [str(res[k].get("compile_seconds", "")) if k in res else "-"
                for k in ("train_step", "eval_forward")]
        raised = f" (batch {res['batch_raised']})" if "batch_raised" in res else ""
        lines.append(f"| {r['config']}{raised} | {r['target']} | {_mib_gflop(res.get('train_step'))} "
                     f"| {_mib_gflop(res.get('eval_forward'))} | {', '.join(secs)} |")
    return "\n".join(lines)


def module_markdown(rows: list) -> str:
    """--modules rows: per chip bytes, FLOPs, cost-model time, roofline and scatters."""
    lines = ["| module | program | target | dtype | path | GB accessed | GFLOP | FLOP/byte "
             "| cost model ms | roofline ms (bound) | scatters |", "|" + "---|" * 11]
    for r in rows:
        for program in ("train_step", "eval_forward"):
            if program not in r:
                continue
            c = r[program]
            roof, model_s = c["roofline"], c.get("xla_optimal_seconds")
            what = ("fwd+bwd " if program == "train_step" else "eval fwd ") + "x".join(
                map(str, c["shape"][:3]))
            lines.append(
                f"| {r['config']} | {what} | {r['target']} | {r['dtype']} | {r['formulation']} "
                f"| {c['bytes_accessed'] / 1e9:.2f} | {c['flops'] / 1e9:.1f} "
                f"| {c['flops'] / c['bytes_accessed']:.0f} "
                f"| {'-' if model_s is None else f'{model_s * 1e3:.2f}'} "
                f"| {roof['seconds'] * 1e3:.2f} ({roof['bound']}) | {c['scatters']} |")
    return "\n".join(lines)


def _gib(b) -> str:
    return f"{b / 2**30:.2f}"


def markdown(path: str) -> str:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    checks = [r for r in rows if r.get("kind") == "config_check"]
    if checks:
        return config_markdown(checks)
    if any(r.get("kind") == "module" for r in rows):
        return module_markdown([r for r in rows if r.get("kind") == "module"])
    extra = {(r["kind"], r["config"], r["target"], r["dtype"]): r for r in rows}
    head = ("| config | target | dtype | train GiB/chip | train GFLOP/chip | train GB accessed"
            " | train roofline ms | max batch/chip | eval LR | eval GiB/chip | eval GFLOP/chip"
            " | eval roofline ms | attention FLOPs / bytes (train) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r["kind"] != "row":
            continue
        key = (r["config"], r["target"], r["dtype"])
        res = r["result"]
        fit = extra.get(("fit_batch",) + key, {}).get("max_per_chip_batch", "")
        att = extra.get(("attention",) + key)
        att_cell = ""
        if att and "train_step" in att and "train_step" in res:
            tr = res["train_step"]["cost"]
            att_cell = (f"{100 * att['train_step']['flops'] / tr['flops']:.0f}% / "
                        f"{100 * att['train_step']['bytes_accessed'] / tr['bytes_accessed']:.0f}%")
        tr, ev = res["train_step"], res["eval_forward"]
        cells = [*key]
        for p in (tr,):
            cells += ([_gib(p["memory"]["total_bytes"]), f"{p['cost']['flops'] / 1e9:.0f}",
                       f"{p['cost']['bytes_accessed'] / 1e9:.1f}",
                       f"{p['roofline']['seconds'] * 1e3:.1f}"]
                      if "memory" in p else ["does not fit", "", "", ""])
        cells.append(str(fit))
        cells.append("x".join(map(str, ev["lr_shape"][1:3])))
        cells += ([_gib(ev["memory"]["total_bytes"]), f"{ev['cost']['flops'] / 1e9:.0f}",
                   f"{ev['roofline']['seconds'] * 1e3:.1f}"]
                  if "memory" in ev else ["does not fit", "", ""])
        cells.append(att_cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
