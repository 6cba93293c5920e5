"""float32 vs bfloat16 train-step time and peak memory (config.train.compute_dtype).

For each config and compute dtype: one compiled `objective.train_step` (random params,
random uint8 HR batch at the config's training batch and patch size), its median step
time over `--repeats` runs after a warm-up, its compile time and XLA's memory analysis of
the compiled step (arguments + outputs + temporaries - aliased, i.e. the peak the
executable needs). Prints the device kind and jax version first, then a table; `--out`
also writes the rows as JSON.

On a lent GPU/TPU (the paper configs, their batch 16 of 48x48 LR patches):

  python experiments/precision_bench.py --out experiments/results/precision_gpu.json

On CPU bf16 is emulated (slower than float32); `--quick` only checks that the script
runs: the `:small` variants at batch 2, one timed step.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from experiments import benchmark, common  # noqa: E402
from jaxsr import precision  # noqa: E402
from jaxsr.models import build_model  # noqa: E402

PAPER_CONFIGS = ("configs/nlsn.py", "configs/dlsn.py")


def bench_config(spec: str, dtype: str, repeats: int, quick: bool) -> dict:
    config = common.load_config(spec + (":small" if quick and ":" not in spec else ""))
    if quick:
        config.train.batch_size = 2
    config.train.compute_dtype = dtype
    precision.compute_dtype(config)        # a clear error for float32-only models
    row = {"config": spec, "model": config.model.name, "dtype": dtype,
           "batch": config.train.batch_size, "hr_patch": config.train.patch_size}
    row.update(benchmark.jax_train_step(config, build_model(config), repeats))
    return row


def print_table(rows: list[dict]) -> None:
    base = {r["config"]: r for r in rows if r["dtype"] == "float32"}
    table = []
    for r in rows:
        ref = base.get(r["config"])
        speedup = ref["jax_s"] / r["jax_s"] if ref else float("nan")
        mem = r["peak_bytes"] / ref["peak_bytes"] if ref and ref["peak_bytes"] else float("nan")
        table.append([r["config"], r["dtype"], r["batch"], r["hr_patch"],
                      f"{r['jax_s'] * 1e3:.1f}", f"{r['jax_compile_s']:.1f}",
                      f"{r['peak_bytes'] / 2**20:.0f}", f"{speedup:.2f}", f"{mem:.2f}"])
    print(common.markdown_table(["config", "dtype", "batch", "HR patch", "step ms",
                                 "compile s", "peak MiB", "speed vs f32", "mem vs f32"],
                                table))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(PAPER_CONFIGS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help=":small variants, batch 2, one timed step (a smoke test)")
    parser.add_argument("--out", default="", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    for dtype in args.dtypes:
        precision.resolve(dtype, key="--dtypes")
    info = common.machine_info()
    print(f"device: {info['device']} ({info['platform']}, {jax.device_count()} devices), "
          f"jax {info['jax']}, python {info['python']}, "
          f"load {info['loadavg_1min_at_start']}")
    repeats = 1 if args.quick else args.repeats
    rows = []
    for spec in args.configs:
        for dtype in args.dtypes:
            rows.append(bench_config(spec, dtype, repeats, args.quick))
            print(f"  {spec} {dtype}: {rows[-1]['jax_s'] * 1e3:.1f} ms/step", flush=True)
    print_table(rows)
    if args.out:
        common.write_json(args.out, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
