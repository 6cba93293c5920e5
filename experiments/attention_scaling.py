"""Time and memory of dense non-local attention vs NLSA vs GLA as the feature map grows.

  python experiments/attention_scaling.py                     # 32x32 .. 512x512, C=64
  python experiments/attention_scaling.py --sizes 32,48,64 --repeats 1   # quick check

Each method is the full linen module on a [1, S, S, C] feature map (convolutions
included): `NonLocalAttention` (dense, Wang et al.), `NonLocalSparseAttention` (NLSN:
K=144, R=4) and `GlobalLearnableAttention` (DLSN: K=128, R=3), with deterministic
evaluation rotations. Modes: 'fwd' (forward) and 'fwdbwd' (gradient of a scalar loss with
respect to the parameters and the input). Time: median wall time of `--repeats` runs
after one warm-up call (compile excluded). Memory: 'rss_peak_bytes' is the peak resident
memory the warm-up call adds (Linux VmHWM, reset before the call; plotted), 'xla_bytes'
XLA's compiled memory analysis (arguments + outputs + temporaries - aliased; it does not
see the scratch of XLA:CPU's YNNPACK fusions, which dense attention gets), and the
device's own peak counter where the backend has one (GPU/TPU).
A configuration whose compiled memory, or whose peak memory or time per call extrapolated
from the two previous sizes, exceeds `--max_gb` / `--max_seconds` is recorded as
'skipped', and larger sizes of that method/mode are not tried (dense attention stops
there: its score matrix is L x L). `--resume` keeps the rows of an interrupted run.

Writes experiments/results/attention_scaling.csv and .png (log-log) and prints the
fitted exponents b of time ~ L^b and of peak memory (L = S*S) over S in [--fit_from,
--fit_to] (dense: over its largest three measured sizes).
"""
import argparse
import csv
import ctypes
import gc
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import common  # noqa: E402
from jaxsr.attention import (GlobalLearnableAttention, NonLocalAttention,  # noqa: E402
                             NonLocalSparseAttention)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
METHODS = {
    "dense": lambda: NonLocalAttention(reduction=2),
    "nlsa": lambda: NonLocalSparseAttention(chunk_size=144, n_hashes=4, reduction=4),
    "gla": lambda: GlobalLearnableAttention(chunk_size=128, n_hashes=3, reduction=4),
}


def random_params(module, x):
    """Parameters from eval_shape + NumPy draws: no compiled init (which would run the
    whole forward once more, expensive for dense attention on large maps)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(0)

    def draw(s):
        std = 0.01 if len(s.shape) <= 1 else 1.0 / math.sqrt(np.prod(s.shape[:-1]))
        return jnp.asarray(rng.normal(size=s.shape) * std, jnp.float32)

    return jax.tree.map(draw, shapes)


def make_fn(module, mode):
    def fwd(params, x):
        return module.apply({"params": params}, x)

    if mode == "fwd":
        return fwd
    return jax.grad(lambda p, x: jnp.mean(jnp.square(fwd(p, x))), argnums=(0, 1))


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def run_peak_bytes(fn):
    """Peak resident memory added by one call of fn (Linux: VmHWM after resetting it
    through /proc/self/clear_refs); None where that is not available."""
    gc.collect()
    try:   # hand freed heap memory back to the OS, so the call's peak is not hidden
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        base = _proc_status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        jax.block_until_ready(fn())
        return None
    jax.block_until_ready(fn())
    return (_proc_status_kb("VmHWM") - base) * 1024


def compiled_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def measure(method: str, size: int, channels: int, mode: str, repeats: int,
            max_bytes: float) -> dict:
    module = METHODS[method]()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, size, size, channels)),
                    jnp.float32)
    params = random_params(module, x)
    row = {"method": method, "mode": mode, "size": size, "pixels": size * size,
           "channels": channels}
    t0 = time.perf_counter()
    compiled = jax.jit(make_fn(module, mode)).lower(params, x).compile()
    row["compile_s"] = round(time.perf_counter() - t0, 3)
    row["xla_bytes"] = compiled_bytes(compiled)
    if row["xla_bytes"] > max_bytes:
        row["status"] = "skipped (memory)"
        return row
    row["rss_peak_bytes"] = run_peak_bytes(lambda: compiled(params, x))   # + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        times.append(time.perf_counter() - t0)
    row.update(status="ok", seconds=statistics.median(times),
               device_peak_bytes=common.device_peak_bytes())
    return row


def predict(rows, method, mode, pixels, key):
    """Extrapolates `key` (seconds / rss_peak_bytes) of the next size from the last two
    measured sizes (local power law, exponent at least 1); None without two points."""
    pts = sorted((r["pixels"], float(r[key])) for r in rows
                 if r["method"] == method and r["mode"] == mode and r["status"] == "ok"
                 and r.get(key))
    if len(pts) < 2:
        return None
    (l1, v1), (l2, v2) = pts[-2:]
    b = max(1.0, math.log(v2 / v1) / math.log(l2 / l1)) if v1 > 0 and v2 > 0 else 1.0
    return v2 * (pixels / l2) ** b


def read_rows(path):
    """Rows of an earlier (possibly interrupted) run, numbers parsed."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = int(v) if v.isdigit() else float(v)
            except (ValueError, AttributeError):
                r[k] = v if v != "" else None
    return rows


def fit_exponent(rows, method, mode, lo, hi, key="seconds"):
    """Least-squares slope of log(key) vs log(pixels) over sizes in [lo, hi]."""
    pts = sorted((r["pixels"], r[key]) for r in rows
                 if r["method"] == method and r["mode"] == mode and r["status"] == "ok"
                 and r.get(key))
    if method == "dense":           # it stops early: its three largest measured sizes
        pts = pts[-3:]
    else:
        pts = [p for p in pts if lo * lo <= p[0] <= hi * hi]
    if len(pts) < 2:
        return float("nan"), pts
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0]), pts


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in [(axes[0], "seconds", "time [s]"),
                           (axes[1], "rss_peak_bytes", "peak memory of a call [bytes]")]:
        for method in METHODS:
            for mode, style in [("fwd", "-o"), ("fwdbwd", "--s")]:
                pts = sorted((r["pixels"], r[key]) for r in rows
                             if r["method"] == method and r["mode"] == mode
                             and r["status"] == "ok" and r.get(key))
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{method} {mode}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels L = H*W")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("dense non-local vs NLSA (K=144, R=4) vs GLA (K=128, R=3), batch 1")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def next_row(rows, method, mode, size, args) -> dict:
    """Measures one configuration unless the extrapolation from the smaller sizes says
    it would exceed the memory or time limit (dense attention on large maps would take
    tens of GB or many minutes: its fused forward hides its L x L scratch from XLA's
    memory analysis, so the compiled-size check alone is not enough)."""
    pixels = size * size
    mem = predict(rows, method, mode, pixels, "rss_peak_bytes")
    sec = predict(rows, method, mode, pixels, "seconds")
    base = {"method": method, "mode": mode, "size": size, "pixels": pixels,
            "channels": args.channels}
    if mem is not None and mem > args.max_gb * 2 ** 30:
        return dict(base, status=f"skipped (predicted {mem / 2 ** 30:.0f} GB)")
    if sec is not None and sec > args.max_seconds:
        return dict(base, status=f"skipped (predicted {sec:.0f} s per call)")
    return measure(method, size, args.channels, mode, args.repeats, args.max_gb * 2 ** 30)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="32,48,64,96,128,192,256,384,512")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--methods", default="dense,nlsa,gla")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max_gb", type=float, default=10.0,
                    help="skip configurations whose compiled or predicted memory exceeds this")
    ap.add_argument("--max_seconds", type=float, default=60.0,
                    help="do not run a size whose predicted time per call exceeds this")
    ap.add_argument("--fit_from", type=int, default=128)
    ap.add_argument("--fit_to", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(RESULTS, "attention_scaling"))
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of an earlier run in OUT.csv, measure the rest")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    info = common.machine_info()
    print("machine:", info, flush=True)
    rows = read_rows(args.out + ".csv") if args.resume else []
    done = {(r["method"], r["mode"], r["size"]) for r in rows}
    stopped = {(r["method"], r["mode"]) for r in rows if r["status"] != "ok"}
    for size in sizes:
        for method in args.methods.split(","):
            for mode in args.modes.split(","):
                if (method, mode) in stopped or (method, mode, size) in done:
                    continue
                row = next_row(rows, method, mode, size, args)
                row["loadavg_1min"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print({k: row[k] for k in row if k != "channels"}, flush=True)
                if row["status"] != "ok":
                    stopped.add((method, mode))       # larger sizes: no fit / too slow
                common.write_csv(args.out + ".csv", rows)
    plot(rows, args.out + ".png")
    print(f"wrote {args.out}.csv and {args.out}.png")
    for method in args.methods.split(","):
        for mode in args.modes.split(","):
            b, pts = fit_exponent(rows, method, mode, args.fit_from, args.fit_to)
            m, _ = fit_exponent(rows, method, mode, args.fit_from, args.fit_to,
                                "rss_peak_bytes")
            span = f"{int(math.sqrt(pts[0][0]))}..{int(math.sqrt(pts[-1][0]))}" if pts else "-"
            print(f"{method:5s} {mode:6s}: time ~ L^{b:.2f}, peak memory ~ L^{m:.2f} "
                  f"(sizes {span})")


if __name__ == "__main__":
    main()
