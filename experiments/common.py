"""Helpers shared by the experiment scripts (hash_rounds, gla_plugin, benchmark).

They call the project's library functions (`jaxsr.train.train`, `jaxsr.evaluate`,
`jaxsr.inference`, `jaxsr.summary`) and add only what experiments need on top: skipping
finished work, timing a compiled forward, machine facts, and writing JSON / CSV /
markdown atomically (a killed sweep never leaves a half-written cell behind).
"""
import csv
import json
import logging
import os
import platform
import socket
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxsr import checkpoint, config_util, evaluate, inference, train  # noqa: E402


# ---------------------------------------------------------------------------------------
# Files

def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_csv(path: str, rows: list[dict]) -> None:
    """Rows of dicts -> CSV with the union of their keys (first-seen order)."""
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def set_dotted(config, key: str, value, convert=None) -> None:
    """config['a']['b'] = value for key 'a.b' (an override of an experiment's variant);
    convert(old, value), when given, makes the value stored from the one it replaces."""
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = convert(node.get(leaf), value) if convert else value


def load_config(spec: str):
    """configs/X.py[:arg], relative to the repository when not found from the cwd."""
    path = spec.partition(":")[0]
    if not os.path.isfile(path) and os.path.isfile(os.path.join(REPO, path)):
        spec = os.path.join(REPO, spec)
    return config_util.load_config_file(spec)


# ---------------------------------------------------------------------------------------
# Machine

def machine_info() -> dict:
    dev = jax.devices()[0]
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {"host": socket.gethostname(), "platform": dev.platform,
            "device": getattr(dev, "device_kind", str(dev)), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "python": platform.python_version(),
            "loadavg_1min_at_start": round(load, 2),
            "other_python_processes": count_python_processes()}


def count_python_processes() -> int:
    """Python processes of other programs on this machine (a shared-CPU warning sign)."""
    n = 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"python" in f.read().split(b"\0")[0]:
                    n += 1
        except OSError:
            continue
    return n


# ---------------------------------------------------------------------------------------
# Train / evaluate through the library

def train_if_needed(config, workdir: str) -> dict:
    """Trains `workdir` up to config.train.num_steps (resuming), unless already there.

    Returns {'trained': bool, 'seconds': wall time of this call, 'step': final step}.
    """
    step = checkpoint.latest_step(workdir)
    if step is not None and step >= config.train.num_steps:
        logging.info("%s already at step %d: skipping training", workdir, step)
        return {"trained": False, "seconds": 0.0, "step": int(step)}
    t0 = time.perf_counter()
    train.train(config, workdir)
    return {"trained": True, "seconds": time.perf_counter() - t0,
            "step": int(checkpoint.latest_step(workdir))}


def evaluate_sets(config, workdir: str) -> tuple[dict, object]:
    """{set: {psnr_y, ssim_y, seconds}} for config.eval.datasets at config.scale, using
    evaluate mode's own functions; also returns the apply_fn (to time it afterwards)."""
    model, params = evaluate.load_model_params(config, workdir)
    apply_fn = evaluate.make_apply_fn(model, params)
    out = {}
    for name in config.eval.datasets:
        r = evaluate.evaluate_set(config, apply_fn, name)
        out[name] = {"psnr_y": r["psnr_y"], "ssim_y": r["ssim_y"],
                     "images": len(r["images"]),
                     "seconds": float(sum(x["seconds"] for x in r["images"].values()))}
    return out, apply_fn


def time_forward(apply_fn, shape, repeats: int = 5) -> dict:
    """Compile (timed, unless already compiled), warm up, then the median wall time of
    `repeats` forwards of a float32 input of `shape`; peak memory from XLA's memory
    analysis of that executable."""
    before = inference.num_compiled(apply_fn)
    t0 = time.perf_counter()
    call, _ = inference.compiled_forward(apply_fn, shape)
    # None when an evaluated image already had this shape (a cache hit, not a compile).
    compile_s = time.perf_counter() - t0 if inference.num_compiled(apply_fn) > before else None
    x = jnp.asarray(np.random.default_rng(0).random(shape, np.float32))
    jax.block_until_ready(call(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call(x))
        times.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "latency_s": statistics.median(times),
            "peak_bytes": inference.forward_memory_bytes(apply_fn, shape),
            "device_peak_bytes": device_peak_bytes()}


def device_peak_bytes():
    """Accelerator peak allocation since start (None on CPU, which has no such counter)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 (backends without memory stats)
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------
# Profiles: where the time goes (convolutions vs attention)

SPLIT = ("convolutions", "attention convs", "attention core", "other")
MIN_COVERAGE = 0.6   # traced op time / wall time below which jax_split gives no shares


def attention_paths(params) -> list[tuple]:
    """Module paths (tuples of names) of the attention blocks: those owning `conv_match`."""
    paths = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(k, "key", str(k)) for k in path]
        if "conv_match" in names:
            paths.add(tuple(names[:names.index("conv_match")]))
    return sorted(paths)


def classify_op(op_name: str, root: str, attn: list[tuple]) -> str:
    """SPLIT category of an HLO op from its metadata op_name, e.g.
    'jit(f)/transpose(jvp(DLSN))/body_0/body_2/conv_match/conv_general_dilated'."""
    parts = op_name.split("/")
    start = next((i + 1 for i, p in enumerate(parts) if root in p), None)
    is_conv = "conv_general_dilated" in op_name
    if start is not None and any(tuple(parts[start:start + len(a)]) == a for a in attn):
        return "attention convs" if is_conv else "attention core"
    return "convolutions" if is_conv else "other"


def hlo_op_names(compiled) -> dict:
    """Instruction name -> metadata op_name, from the compiled HLO text."""
    import re
    out = {}
    for m in re.finditer(r'%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"', compiled.as_text()):
        out[m.group(1)] = m.group(2)
    return out


def jax_split(compiled, run, root: str, attn: list[tuple], repeats: int = 3) -> dict:
    """Shares of XLA:CPU op time per SPLIT category, from a jax.profiler trace of
    `repeats` calls of `run()` (which executes `compiled`), plus 'coverage': traced op
    time / wall time. Eigen convolutions (jaxsr's default, jaxsr/xla_cpu.py) run on
    XLA's intra-op thread pool after their thunk's trace event has ended, so the trace
    misses most of their time: below MIN_COVERAGE the shares are None (not measured)."""
    import glob
    import tempfile
    names = hlo_op_names(compiled)
    run()
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        t0 = time.perf_counter()
        for _ in range(repeats):
            run()
        wall = time.perf_counter() - t0
        jax.profiler.stop_trace()
        data = jax.profiler.ProfileData.from_file(
            glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0])
        totals = dict.fromkeys(SPLIT, 0.0)
        for plane in data.planes:
            for line in plane.lines:
                for ev in line.events:
                    if ev.name in names:
                        totals[classify_op(names[ev.name], root, attn)] += ev.duration_ns
    coverage = sum(totals.values()) / 1e9 / wall
    shares = _shares(totals) if coverage >= MIN_COVERAGE else dict.fromkeys(SPLIT)
    return {**shares, "coverage": coverage}


def torch_split(net, attn_modules, run, repeats: int = 3) -> dict:
    """Shares of PyTorch self CPU time per SPLIT category for `run()` (a forward): ops
    under an attention module (marked by hooks) vs the rest; conv = aten ops named *conv*."""
    import torch
    from torch.autograd.profiler import record_function
    hooks = []
    for m in attn_modules:
        def pre(mod, args):
            mod._bench_range = record_function("bench_attention")
            mod._bench_range.__enter__()

        def post(mod, args, out):
            mod._bench_range.__exit__(None, None, None)
        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        run()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                run()
    finally:
        for h in hooks:
            h.remove()
    totals = dict.fromkeys(SPLIT, 0.0)
    for ev in prof.events():
        if ev.name == "bench_attention":
            continue
        parent, in_attn = ev.cpu_parent, False
        while parent is not None and not in_attn:
            in_attn, parent = parent.name == "bench_attention", parent.cpu_parent
        conv = "conv" in ev.name
        key = ("attention convs" if conv else "attention core") if in_attn else \
            ("convolutions" if conv else "other")
        totals[key] += ev.self_cpu_time_total
    return _shares(totals)


def _shares(totals: dict) -> dict:
    total = sum(totals.values()) or 1.0
    return {k: v / total for k, v in totals.items()}
