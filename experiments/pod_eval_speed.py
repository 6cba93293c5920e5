"""Wall time of `--mode evaluate` on one benchmark set with 1 process vs 2 processes
(jax.distributed over 127.0.0.1, 1 CPU device each; jaxsr.eval_engine splits the images).

  python experiments/pod_eval_speed.py --config configs/edsr.py:small --set B100 \
      --repeats 3 --out experiments/results/pod_eval_b100_x2_vm.json

The weights are random (jaxsr's timing does not depend on them; the scores are
meaningless and not reported). One untimed run of each kind first fills a shared XLA
compilation cache, so the timed runs measure evaluation, not compiles; the timed runs
alternate 1 / 2 processes. Each run records the 1-minute load average before it (the
machine may be shared), the command's wall time and the seconds evaluate logged per image.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
from experiments import common  # noqa: E402


def make_workdir(config_spec: str, workdir: str) -> None:
    from jaxsr import checkpoint, config_util, models
    from test_inference import random_params
    config = config_util.load_config_file(os.path.join(REPO, config_spec))
    checkpoint.save_params(workdir, random_params(models.build_model(config)), config)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(args, workdir: str, n: int, env: dict, log_dir: str) -> dict:
    cmd = [sys.executable, "-m", "jaxsr.main", "--mode=evaluate", f"--config={args.config}",
           f"--workdir={workdir}", f"--config.eval.datasets=('{args.set}',)",
           f"--config.eval.benchmarks_dir={args.benchmarks_dir}"]
    port, logs, procs = free_port(), [], []
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    for i in range(n):
        extra = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
                  f"--process_id={i}"] if n > 1 else [])
        logs.append(os.path.join(log_dir, f"run{n}_{i}_{time.time_ns()}.log"))
        procs.append(subprocess.Popen(cmd + extra, cwd=REPO, env=env, stdout=open(logs[-1], "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
    codes = [p.wait(timeout=args.timeout) for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"exit codes {codes}: {open(logs[0]).read()[-3000:]}")
    per_image = [float(s) for log in logs
                 for s in re.findall(r"'seconds': ([0-9.]+)\}", open(log).read())]
    return {"processes": n, "wall_s": round(wall, 2), "load_1min_before": load,
            "images": len(per_image), "image_seconds_sum": round(sum(per_image), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/edsr.py:small")
    ap.add_argument("--set", default="B100")
    ap.add_argument("--benchmarks_dir", default=os.path.join(REPO, "..", "shared", "data",
                                                             "benchmarks"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pod_eval_speed_")
    workdir = os.path.join(tmp, "wd")
    make_workdir(args.config, workdir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    for n in (1, 2):
        run_once(args, workdir, n, env, tmp)             # warm the compilation cache
    runs = [run_once(args, workdir, n, env, tmp) for _ in range(args.repeats) for n in (1, 2)]
    best = {n: min(r["wall_s"] for r in runs if r["processes"] == n) for n in (1, 2)}
    result = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": f"{os.cpu_count()} CPUs, shared", "config": args.config,
              "set": args.set, "runs": runs, "best_wall_s": best,
              "speedup_best": round(best[1] / best[2], 3)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    common.write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
