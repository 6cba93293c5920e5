"""Where a paper config's compile time goes: one attention module (DLSN's GLA, NLSN's NLSA)
compiled alone for a TPU target, forward + backward at the network's per-chip training
shape, wall and CPU seconds (`jaxsr.aot.timed`), to set against the whole train step of
`--mode compile`. The module is built and compiled by experiments/aot_table.py's
`attention_modules` / `module_costs` (the `--attention` rows), only timed here.

  python experiments/compile_breakdown.py --configs configs/dlsn.py --target v5litepod-8 \
      --out experiments/results/compile_breakdown_v5e.jsonl
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import aot_table  # noqa: E402
from jaxsr import aot  # noqa: E402


def attention_compile_time(spec: str, target: str, dtype: str = "float32") -> dict:
    """Wall and CPU seconds to lower and compile one attention module's fwd + bwd."""
    c = aot_table.load(spec, dtype)
    module, count = aot_table.attention_modules(c)
    lr = c.train.patch_size // c.scale
    shape = (c.train.batch_size, lr, lr, c.model.n_feats)
    _, wall, cpu = aot.timed(lambda: aot_table.module_costs(
        module, {"train_step": shape}, target, dtype))
    return {"config": spec, "target": target, "dtype": dtype,
            "module": type(module).__name__, "modules_in_network": count,
            "global_input": list(shape), "fwd_bwd_compile_seconds": wall,
            "fwd_bwd_compile_cpu_seconds": cpu, "load_average": os.getloadavg()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["configs/dlsn.py", "configs/nlsn.py"])
    ap.add_argument("--target", default="v5litepod-8")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    aot.prepare_host(args.target)
    for spec in args.configs:
        row = attention_compile_time(spec, args.target)
        print(json.dumps(row))
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
