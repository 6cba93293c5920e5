"""Cost of on-device LR synthesis vs one train step (docs/degradations.md, issue 4 item 7).

  python experiments/degradation_bench.py                      # x4, batch 16, HR 192
  python experiments/degradation_bench.py --presets bd,kair --models edsr --repeats 5

For each degradation preset: median time of the jitted `synthesize_lr` on a batch of
HR crops; for each model (EDSR-baseline, the small DLSN of configs/dlsn.py:small): median
time of one jitted train step (`jaxsr.objectives` 'sr': synthesis + forward + backward +
Adam) on the same batch. Prints a markdown table with the ratio degradation / train step;
`--out FILE.json` also writes the numbers. Compile time is reported separately.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from jaxsr import models, objectives  # noqa: E402
from jaxsr.data import degradations  # noqa: E402

PRESETS = "bicubic,bd,dn15,nlcunet_iso,nlcunet_aniso,kenet,kair"
MODELS = {"edsr": ("edsr.py", None), "dlsn_small": ("dlsn.py", "small")}


def load_config(file: str, arg):
    spec = importlib.util.spec_from_file_location("_bench_cfg", os.path.join(REPO, "configs", file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def timed(fn, repeats: int):
    """(compile+first run seconds, median of `repeats` later runs)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t0)
    return first, statistics.median(runs)


def bench_preset(name: str, scale: int, hr01, repeats: int, impl: str):
    config = load_config("edsr.py", None)
    config.scale = scale
    config.degradation.name = name
    config.degradation.blur_impl = impl
    fn = jax.jit(lambda h, k: degradations.synthesize_lr(h, k, config))
    key = jax.random.key(0)
    return timed(lambda: fn(hr01, key), repeats)


def bench_model(name: str, scale: int, hr_uint8, repeats: int):
    file, arg = MODELS[name]
    config = load_config(file, arg)
    config.scale = scale
    config.train.batch_size = hr_uint8.shape[0]
    model = models.build_model(config)
    objective = objectives.make(config, model)
    state = objective.init_state(jax.random.key(0), hr_uint8)
    step = jax.jit(objective.train_step)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], hr_uint8, jax.random.key(1))
        return metrics["loss"]
    return timed(run, repeats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=192, help="HR crop side")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", default=PRESETS)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--impl", default="auto", help="blur_impl: auto | fft | direct")
    ap.add_argument("--out", default="", help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    hr_uint8 = jnp.asarray(rng.integers(0, 256, (args.batch, args.patch, args.patch, 3),
                                        dtype=np.uint8))
    hr01 = hr_uint8.astype(jnp.float32) / 255.0
    res = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
           "cpu_count": os.cpu_count(), "args": vars(args), "presets": {}, "models": {}}
    for name in [m for m in args.models.split(",") if m]:
        try:
            first, med = bench_model(name, args.scale, hr_uint8, args.repeats)
            res["models"][name] = {"step_s": med, "first_s": first}
        except Exception as e:                  # noqa: BLE001 (a model may be missing)
            res["models"][name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, res["models"][name], flush=True)
    for name in [p for p in args.presets.split(",") if p]:
        first, med = bench_preset(name, args.scale, hr01, args.repeats, args.impl)
        res["presets"][name] = {"synth_s": med, "first_s": first}
        print(name, res["presets"][name], flush=True)

    steps = {m: v["step_s"] for m, v in res["models"].items() if "step_s" in v}
    head = "| preset | synth (ms) | compile+1st (s) | " + " | ".join(
        f"% of {m} step ({1e3 * t:.0f} ms)" for m, t in steps.items()) + " |"
    print(f"\nx{args.scale}, batch {args.batch} x {args.patch}^2 HR, {res['device']}, "
          f"blur_impl={args.impl}, median of {args.repeats}\n")
    print(head)
    print("|" + "---|" * (3 + len(steps)))
    for name, v in res["presets"].items():
        ratios = " | ".join(f"{100 * v['synth_s'] / t:.1f}%" for t in steps.values())
        print(f"| {name} | {1e3 * v['synth_s']:.1f} | {v['first_s']:.2f} | {ratios} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
