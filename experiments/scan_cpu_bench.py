"""config.model.scan_blocks on the CPU: `make bench`'s JAX rows (experiments/benchmark.py's
forward and train-step functions, experiments/bench_fns.py) for NLSN / DLSN `:small`,
unrolled vs scanned, timed in alternating rounds so that both layouts see the same load
(this VM is shared): per row the median of every round's median, and scanned / unrolled.

  nice -n 5 python experiments/scan_cpu_bench.py --out experiments/results/scan_cpu_bench.json
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402
from experiments.bench_fns import (  # noqa: E402
    jax_forward_fn, jax_train_step_fn, random_params, variant_config)
from jaxsr import models  # noqa: E402

LAYOUTS = ("false", "true")


def programs(network: str, scan_blocks: str, sizes) -> dict:
    """{row name: bench_fns program dict} of one network in one layout."""
    config = variant_config(network, "small")
    config.model.scan_blocks = scan_blocks
    model = models.build_model(config)
    params = random_params(model, min(sizes))
    rows = {f"forward {s}x{s}": jax_forward_fn(model, params, s) for s in sizes}
    p = config.train.patch_size // config.scale
    rows[f"train_step {config.train.batch_size}x{p}x{p}"] = jax_train_step_fn(config, model)
    return rows


def round_median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(network: str, sizes, rounds: int, repeats: int) -> list[dict]:
    progs = {layout: programs(network, layout, sizes) for layout in LAYOUTS}
    for layout in LAYOUTS:                   # warm-up
        for p in progs[layout].values():
            p["run"]()
    out = []
    for row in progs["false"]:
        medians = {layout: [] for layout in LAYOUTS}
        for r in range(rounds):              # alternate which layout goes first
            for layout in (LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]):
                medians[layout].append(round_median(progs[layout][row]["run"], repeats))
        t = {layout: statistics.median(m) for layout, m in medians.items()}
        out.append({"network": network, "variant": "small", "row": row,
                    "unrolled_s": t["false"], "scanned_s": t["true"],
                    "scanned_over_unrolled": t["true"] / t["false"],
                    "round_medians": medians,
                    "compile_s": {layout: progs[layout][row]["compile_s"] for layout in LAYOUTS},
                    "load_average": os.getloadavg()})
        print(out[-1]["network"], row, f"unrolled {t['false'] * 1e3:.1f} ms, scanned "
              f"{t['true'] * 1e3:.1f} ms, ratio {out[-1]['scanned_over_unrolled']:.3f}",
              flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["nlsn", "dlsn"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    rows = []
    for network in args.models:
        rows += compare(network, args.sizes, args.rounds, args.repeats)
        if args.out:
            common.write_json(args.out, {"machine": common.machine_info(), "rows": rows,
                                         "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
