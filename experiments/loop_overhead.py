"""What the asynchronous train loop gains over a loop that waits for every step.

Both loops run the same jitted step of `jaxsr.train` on the same data pipeline, in one
process, alternating (A B A B ...) so that machine load hits both alike:

  synced:  batch -> device, step, read the finiteness flag (a device->host sync per step:
           the wave-1 loop)
  async:   `train.device_batches` (two batches ahead on the device), no read until the end
           (the loop of jaxsr.train)

  python experiments/loop_overhead.py --config configs/edsr.py:demo --steps 60 --repeats 3
"""
import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxsr import config_util, train  # noqa: E402
from jaxsr.data import pipeline  # noqa: E402


def synced_steps(step_fn, state, data_iter, data_sharding, bad, n):
    for _ in range(n):
        hr = jax.make_array_from_process_local_data(data_sharding, next(data_iter)["hr"])
        state, metrics, bad = step_fn(state, hr, bad)
        if not bool(metrics["finite"]):
            raise ArithmeticError("non-finite step")
    return state, bad


def async_steps(step_fn, state, batches, bad, n):
    for _ in range(n):
        hr, _ = next(batches)
        state, metrics, bad = step_fn(state, hr, bad)
    jax.block_until_ready(state)
    return state, bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/edsr.py:demo")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", default="")
    args = ap.parse_args()
    config = config_util.load_config_file(args.config)
    _, state, step_fn, repl, data_sh = train.step_setup(config)
    data_iter = iter(pipeline.train_dataset(config))
    batches = train.device_batches(data_iter, data_sh)
    bad = jax.device_put(np.zeros((), np.int32), repl)
    state, bad = synced_steps(step_fn, state, data_iter, data_sh, bad, 3)      # compile, warm
    times = {"synced": [], "async": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, bad = synced_steps(step_fn, state, data_iter, data_sh, bad, args.steps)
        times["synced"].append((time.perf_counter() - t0) / args.steps)
        t0 = time.perf_counter()
        state, bad = async_steps(step_fn, state, batches, bad, args.steps)
        times["async"].append((time.perf_counter() - t0) / args.steps)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    result = {"config": args.config, "steps": args.steps, "repeats": args.repeats,
              "device": jax.devices()[0].device_kind, "jax": jax.__version__,
              "ms_per_step": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()},
              "median_ms": {k: round(v, 2) for k, v in med.items()},
              "async_speedup": round(med["synced"] / med["async"], 3)}
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
