"""Is anything host- or launch-dependent traced into the programs a relaunch needs again?

For each config, two fresh processes -- different PYTHONHASHSEED, working directory, start
time and pid -- lower the train step and the eval forward exactly as `--mode compile` does
(`jaxsr.aot.lower_train_step` / `lower_forward`, here for this host's CPU) and hash the
StableHLO without debug locations (what JAX's persistent-cache key is computed from,
besides the compile options, devices and versions). Equal hashes: a relaunch finds the
entries the first launch wrote; a difference names the program to look at.

  python experiments/cache_key_audit.py --configs configs/nlsn.py:small configs/dlsn.py:small \
      --out experiments/results/cache_key_audit.json
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 900


def program_hashes(spec: str) -> dict:
    """sha256 of each program's StableHLO (no locations), lowered in this process."""
    sys.path.insert(0, REPO)
    import jax
    from jaxsr import aot, config_util, objectives, train
    from jaxsr.models import build_model
    config = config_util.load_config_file(os.path.join(REPO, spec))
    devices = jax.devices()
    train.check_batch(config, len(devices))
    repl, _ = train.shardings(devices)
    objective = objectives.make(config, build_model(config))
    state = aot.abstract_state(objective, config, repl)
    lowered = {"train_step": aot.lower_train_step(config, devices, objective, state),
               "eval_forward": aot.lower_forward(config, devices, state["params"], 48)}
    return {name: hashlib.sha256(low.as_text(debug_info=False).encode()).hexdigest()
            for name, low in lowered.items()}


def in_fresh_process(spec: str, hash_seed: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, JAX_PLATFORMS="cpu")
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", spec],
                             cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=TIMEOUT_S)
    if out.returncode:
        raise RuntimeError(f"{spec}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["configs/nlsn.py:small",
                                                     "configs/dlsn.py:small"])
    ap.add_argument("--out", default="")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(program_hashes(args.child)))
        return
    rows = []
    for spec in args.configs:
        first = in_fresh_process(spec, "1")
        time.sleep(1.0)                              # another start time
        second = in_fresh_process(spec, "2")
        rows.append({"config": spec, "first": first, "second": second,
                     "same": first == second})
        print(spec, "same" if first == second else f"DIFFERENT: {first} vs {second}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
