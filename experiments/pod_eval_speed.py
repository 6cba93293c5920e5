"""Wall time of `--mode evaluate` on one benchmark set with 1 process vs 2 processes
(jax.distributed over 127.0.0.1, 1 CPU device each; jaxsr.eval_engine splits the images),
unpinned and pinned.

  python experiments/pod_eval_speed.py --config configs/edsr.py:small --set B100 \
      --repeats 2 --out experiments/results/pod_eval_b100_x2_pinned.json

Pinning (`--pinning`): 'none' lets every process's XLA use every core (one process already
keeps both cores of the 2-core VM busy, so a second process only competes for them);
'cores' gives process i core i (`taskset -c i`) and XLA:CPU one intra-op thread
(PJRT_NPROC=1; taskset alone also sizes the pool to the affinity mask): 1 process on 1
core vs 2 processes on 2 cores, the CPU analogue of one host's chips vs two hosts'. The
number of XLA intra-op threads ('tf_XLAEigen') of each process is read from /proc during
the run and recorded.

The weights are random (the timing does not depend on them; the scores are meaningless
and not reported). One untimed run of each kind first fills a shared XLA compilation
cache (process 0 writes JAX's; process 1, whose programs are keyed by its own device,
keeps its own entries: jaxsr.process_executables); the timed runs alternate. Each run records the 1-minute
load average before and after it, the wall time, the CPU seconds of all its processes
(user + system) and, per process, a timeline from its log (seconds
after launch): first log line (Python + JAX imported), params loaded, first image
started, last image done, results written (process 0); and the seconds evaluate logged per
image.
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
from experiments import common  # noqa: E402

LOG_LINE = re.compile(r"^[IWE]\d{4} (\d\d:\d\d:\d\d\.\d+) +\d+ (\S+)\] (.*)$")
IMAGE_SECONDS = re.compile(r"'seconds': ([0-9.]+)\}")


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


def xla_threads(pid: int) -> int:
    """XLA:CPU intra-op threads of `pid` and its children (the supervised child)."""
    count = 0
    for p in [pid] + _children(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/comm") as f:
                    count += f.read().strip() == "tf_XLAEigen"
        except OSError:
            continue
    return count


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _children_cpu_s() -> float:
    """User + system CPU seconds of every finished child and its descendants."""
    import resource
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def timeline(log: str, launched: float) -> dict:
    """Seconds after `launched` (epoch) at which the process passed each stage (docstring)."""
    day = datetime.datetime.fromtimestamp(launched).date()
    marks, seconds = {}, []
    for line in open(log):
        m = LOG_LINE.match(line)
        if not m:
            continue
        t = datetime.datetime.combine(day, datetime.time.fromisoformat(m[1])).timestamp()
        at = round(t - launched, 2)
        marks.setdefault("first_log", at)
        if "loaded params" in m[3]:
            marks["params_loaded"] = at
        found = IMAGE_SECONDS.search(m[3])
        if m[2].startswith("evaluate.py") and found:
            seconds.append(float(found[1]))
            marks.setdefault("first_image_start", round(at - seconds[-1], 2))
            marks["last_image_done"] = at
        if "written to" in m[3]:
            marks["results_written"] = at
    return {**marks, "images": len(seconds), "image_seconds_sum": round(sum(seconds), 2)}


def launch(args, workdir: str, n: int, pinned: bool, env: dict, log_dir: str):
    cmd = [sys.executable, "-m", "jaxsr.main", "--mode=evaluate", f"--config={args.config}",
           f"--workdir={workdir}", f"--config.eval.datasets=('{args.set}',)",
           f"--config.eval.benchmarks_dir={args.benchmarks_dir}"]
    port, logs, procs = free_port(), [], []
    for i in range(n):
        extra = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
                  f"--process_id={i}"] if n > 1 else [])
        pin = ["taskset", "-c", str(i)] if pinned else []
        logs.append(os.path.join(log_dir, f"run{n}_{i}_{time.time_ns()}.log"))
        procs.append(subprocess.Popen(
            pin + cmd + extra, cwd=REPO, env=dict(env, PJRT_NPROC="1") if pinned else env,
            stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT, start_new_session=True))
    return procs, logs


def run_once(args, workdir: str, n: int, pinned: bool, env: dict, log_dir: str) -> dict:
    load = os.getloadavg()[0]
    cpu0 = _children_cpu_s()
    launched, t0 = time.time(), time.perf_counter()
    procs, logs = launch(args, workdir, n, pinned, env, log_dir)
    threads = {}

    def sample():            # the pools exist once JAX is up; read them mid-run
        time.sleep(args.thread_probe_s)
        threads.update({i: xla_threads(p.pid) for i, p in enumerate(procs)})

    probe = threading.Thread(target=sample, daemon=True)
    probe.start()
    codes = [p.wait(timeout=args.timeout) for p in procs]
    wall = time.perf_counter() - t0
    cpu = _children_cpu_s() - cpu0
    probe.join(timeout=1)
    if any(codes):
        raise RuntimeError(f"exit codes {codes}: {open(logs[0]).read()[-3000:]}")
    per_process = [dict(timeline(log, launched), xla_threads=threads.get(i))
                   for i, log in enumerate(logs)]
    return {"processes": n, "pinning": "cores" if pinned else "none",
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2),
            "images": sum(p["images"] for p in per_process),
            "image_seconds_sum": round(sum(p["image_seconds_sum"] for p in per_process), 2),
            "per_process": per_process}


def summary(runs: list, pinnings: list) -> dict:
    out = {}
    for pin in pinnings:
        best = {n: min(r["wall_s"] for r in runs if r["processes"] == n and r["pinning"] == pin)
                for n in (1, 2)}
        out[pin] = {"best_wall_s": best, "speedup_best": round(best[1] / best[2], 3)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/edsr.py:small")
    ap.add_argument("--set", default="B100")
    ap.add_argument("--benchmarks_dir", default=os.path.join(REPO, "..", "shared", "data",
                                                             "benchmarks"))
    ap.add_argument("--pinning", choices=["none", "cores", "both"], default="both")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--thread_probe_s", type=float, default=4.0)
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
    env.pop("PJRT_NPROC", None)
    pinnings = ["none", "cores"] if args.pinning == "both" else [args.pinning]
    kinds = [(n, pin == "cores") for pin in pinnings for n in (1, 2)]
    for n, pinned in kinds:
        run_once(args, workdir, n, pinned, env, tmp)       # warm the compilation cache
    runs = [run_once(args, workdir, n, pinned, env, tmp)
            for _ in range(args.repeats) for n, pinned in kinds]
    result = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": f"{os.cpu_count()} CPUs, shared", "config": args.config,
              "set": args.set, "runs": runs, "summary": summary(runs, pinnings)}
    common.write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
