"""Time from launch to the first training step, with and without the compilation cache.

Three launches of `python -m jaxsr.main --mode train` of one config on this machine:
  fresh      a new workdir, its cache (<workdir>/compile_cache) empty: compiles, writes;
  relaunch   the same command, num_steps raised: resumes, the cache is warm;
  no_cache   the same resume on a copy of the workdir with --compile_cache=none.
For each: seconds from the process start to the first "step N:" log line, the loop's own
first-step seconds (1 / steps_per_s of that step: the train step's compile or cache load
plus one step), and the cache hits / misses JAX logged.

  python experiments/time_to_first_step.py --config configs/nlsn.py:small \
      --out experiments/results/time_to_first_step_nlsn_small.json
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 1800
STEP = re.compile(r"\] step (\d+): .*steps_per_s=([\d.e+-]+)")
HIT = re.compile(r"Persistent compilation cache hit for '(\w+)'")
MISS = re.compile(r"PERSISTENT COMPILATION CACHE MISS for '(\w+)'")


def launch(config: str, workdir: str, num_steps: int, extra=()) -> dict:
    cmd = [sys.executable, "-m", "jaxsr.main", "--config", config, "--workdir", workdir,
           f"--config.train.num_steps={num_steps}", "--config.train.log_every=1",
           "--config.train.checkpoint_every=1000000", "--config.train.eval_every=0",
           *extra]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first_line_s, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first_line_s is None and STEP.search(line):
            first_line_s = time.perf_counter() - t0
    proc.wait(timeout=TIMEOUT_S)
    log = "".join(lines)
    if proc.returncode:
        raise RuntimeError(log[-3000:])
    step = STEP.search(log)
    return {"launch_to_first_step_s": round(first_line_s, 2),
            "loop_first_step_s": round(1.0 / float(step[2]), 2), "first_step": int(step[1]),
            "total_s": round(time.perf_counter() - t0, 2),
            "cache_hits": HIT.findall(log), "cache_misses": MISS.findall(log)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/nlsn.py:small")
    ap.add_argument("--steps", type=int, default=2, help="steps of the first launch")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="ttfs-")
    try:
        wd, copy = os.path.join(root, "run"), os.path.join(root, "copy")
        rows = {"fresh": launch(args.config, wd, args.steps)}
        shutil.copytree(wd, copy, ignore=shutil.ignore_patterns("compile_cache"))
        rows["relaunch"] = launch(args.config, wd, 2 * args.steps)
        rows["no_cache"] = launch(args.config, copy, 2 * args.steps,
                                  ["--compile_cache=none"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"command": " ".join(sys.argv), "config": args.config, **rows,
              "load_average": os.getloadavg()}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
