"""Where a paper config's compile time goes, for a TPU target (compile CPU seconds, the
figure to compare on a shared VM):

* `--attention`: one attention module (DLSN's GLA, NLSN's NLSA) compiled alone, forward +
  backward at the network's per-chip training shape and forward at the eval forward's
  (one `aot.DEFAULT_EVAL_LR` LR image per chip), built by experiments/aot_table.py's
  `attention_modules` / `module_costs` (the `--attention` rows' module), only timed here;
* `--variants`: the network's train step and eval forward (`aot.run_compile`, as
  `--mode compile`) for config variants that differ in one part: NLSN with its attention
  segments removed (only body_0's NLSA left) and with no NLSA at all (the same ResBlocks
  as EDSR), so that the differences are what each part costs.

  python experiments/compile_breakdown.py --configs configs/nlsn.py --target v4-32 \
      --attention --variants --out experiments/results/compile_breakdown_nlsn_v4-32.jsonl
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import aot_table, common  # noqa: E402
from jaxsr import accelerators, aot, config_util  # noqa: E402


def attention_compile_time(spec: str, target: str, dtype: str = "float32") -> list[dict]:
    """Wall and CPU seconds to lower and compile one attention module, per program."""
    c = aot_table.load(spec, dtype)
    module, count = aot_table.attention_modules(c)
    chips = len(aot.target_devices(accelerators.parse_target(target)))
    lr = c.train.patch_size // c.scale
    shapes = {"train_step": (c.train.batch_size, lr, lr, c.model.n_feats),
              "eval_forward": (chips, aot.DEFAULT_EVAL_LR, aot.DEFAULT_EVAL_LR,
                               c.model.n_feats)}
    rows = []
    for program, shape in shapes.items():
        _, wall, cpu = aot.timed(lambda: aot_table.module_costs(
            module, {program: shape}, target, dtype))
        rows.append({"config": spec, "target": target, "dtype": dtype, "part": "attention",
                     "module": type(module).__name__, "modules_in_network": count,
                     "program": program, "global_input": list(shape),
                     "compile_seconds": wall, "compile_cpu_seconds": cpu})
    return rows


# label -> config overrides (dotted keys) of a network variant; None = the config as is.
NETWORK_VARIANTS = {
    "nlsn": {"full": None,
             "attention_impl='xla' (sorted chunk tables, no Pallas)":
                 {"model.attention_impl": "xla"},
             "body_0 NLSA only (no segment NLSA)": {"model.attn_every": 1000},
             "no NLSA (EDSR, same ResBlocks)": {"model.name": "edsr"}},
}


def variant_config(spec: str, overrides: dict | None):
    c = config_util.load_config_file(spec)
    c.model.init = "flax"        # the program does not depend on the init values
    for key, value in (overrides or {}).items():
        common.set_dotted(c, key, value)
    return c


def network_variant_times(spec: str, target: str, skip=()) -> list[dict]:
    name = config_util.load_config_file(spec).model.name
    rows = []
    for label, overrides in NETWORK_VARIANTS.get(name, {}).items():
        if label in skip:
            continue
        for program in aot.PROGRAMS:
            rep = aot.run_compile(variant_config(spec, overrides), target,
                                  programs=(program,), check=False)[program]
            rows.append({"config": spec, "target": target, "part": label,
                         "overrides": overrides, "program": program,
                         "compile_seconds": rep["compile_seconds"],
                         "compile_cpu_seconds": rep["compile_cpu_seconds"],
                         "generated_code_bytes": rep["memory"]["generated_code_bytes"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["configs/dlsn.py", "configs/nlsn.py"])
    ap.add_argument("--target", default="v5litepod-8")
    ap.add_argument("--attention", action="store_true", help="the attention module alone")
    ap.add_argument("--variants", action="store_true", help="network variants (NLSN)")
    ap.add_argument("--skip", nargs="*", default=[], help="variant labels not to compile")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    aot.prepare_host(args.target)
    for spec in args.configs:
        rows = attention_compile_time(spec, args.target) if args.attention else []
        rows += network_variant_times(spec, args.target, args.skip) if args.variants else []
        for row in rows:
            row["load_average"] = os.getloadavg()
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
