"""Entry point: `python -m jaxsr.main --config configs/X.py --workdir DIR [--mode ...]`.

  --mode train     train; resumes automatically from DIR when it has a checkpoint
  --mode evaluate  evaluate the latest checkpoint in DIR (or --step N | best) on config.eval.datasets
  --mode info      parameter counts and FLOPs per LR pixel -> DIR/info.json
  --mode compile   compile the train step and eval forward ahead of time for --target
                   (a TPU slice: v5e:2x4, v4-32, v5litepod-8, v6e-8, v5p-16; or cpu) without
                   the hardware: per-chip memory vs HBM, FLOPs, roofline -> DIR/compile.json;
                   exits non-zero when it does not fit (jaxsr.aot); compile wall and CPU
                   seconds and code size per program; --fit_batch: the largest per-chip batch
Any config field can be overridden: `--config.train.num_steps=100`.

Multi-process (one process per host; see README "Multi-host"): on Cloud TPU, SLURM or Open
MPI the processes find each other; elsewhere pass `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID) to every process (train and evaluate alike). When one process is lost (no
heartbeat for --heartbeat_timeout s) or stalls (no training step within
config.train.watchdog_*), the others stop with one message and exit status 75 (an error
of the work exits 1); rerun the same command (docs/distributed.md). A command whose work
is done ends within --exit_timeout s whatever its data reader threads do.
"""
import logging

from absl import app, flags
from ml_collections import config_flags

from jaxsr import config_util

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/X.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "info", "compile"],
                          "What to do.")
_TARGET = flags.DEFINE_string("target", "cpu", "compile: a TPU topology (v5e:2x4, v4:2x2x4), "
                              "a Cloud TPU type (v5litepod-8, v4-32, v6e-8, v5p-16) or cpu.")
_EVAL_LR = flags.DEFINE_integer("eval_lr_size", 256, "compile: LR side of the compiled "
                                "evaluation forward (one image per chip).")
_FIT_BATCH = flags.DEFINE_bool("fit_batch", False, "compile: find the largest per-chip "
                               "batch whose train step fits --target (one compile per try) "
                               "-> DIR/fit_batch.json.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", None, "Persistent compilation cache folder (local or gs://; trusted "
    "code: keep it where only you write). Default: config.compile_cache_dir, else "
    "JAX_COMPILATION_CACHE_DIR, else <workdir>/compile_cache (train, evaluate); 'none': off.")
_STEP = flags.DEFINE_string("step", None, "evaluate: the checkpoint step to score (default: "
                            "the latest; e.g. the one before a damaged one), or 'best'.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed start-up: 'auto' when an address/process count is given or a cluster "
    "launcher reports several processes; 'on' always (JAX finds the cluster, e.g. TPU pods).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
# Coordination-service timeouts (docs/distributed.md); JAX's defaults suit pods.
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "Seconds without a heartbeat after which a process counts as "
    "lost: every other process then stops with one message and exit status 75.")
_SHUTDOWN = flags.DEFINE_integer("shutdown_timeout", 300, "Seconds a finishing process waits "
                                 "for the others at exit.")
_INIT_TIMEOUT = flags.DEFINE_integer("initialization_timeout", 300, "Seconds the processes "
                                     "wait for each other at start-up.")
_EXIT_TIMEOUT = flags.DEFINE_float(
    "exit_timeout", 10, "Seconds a command whose work is done waits for its other threads "
    "(e.g. data readers blocked on storage that stopped answering) before it ends anyway, "
    "with the same exit status (jaxsr.exit_bound).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)   # Orbax's per-save INFO chatter
    from jaxsr import checkpoint, compile_cache, distributed, exit_bound, faults, run
    if _MODE.value == "compile":
        from jaxsr import aot
        aot.prepare_host(_TARGET.value)     # compile-only: this host's CPU, quiet libtpu
        compile_cache.setup(_COMPILE_CACHE.value, _CONFIG.value, _WORKDIR.value, "compile")
        run.run("compile", _CONFIG.value, _WORKDIR.value,
                compile_options={"target": _TARGET.value, "eval_lr_size": _EVAL_LR.value,
                                 "fit": _FIT_BATCH.value})
        return
    # Before anything compiles (a multi-process start-up may): JAX decides at its first
    # compile whether this process uses the cache.
    compile_cache.setup(_COMPILE_CACHE.value, _CONFIG.value, _WORKDIR.value, _MODE.value)
    try:
        step = checkpoint.parse_step(_STEP.value)
        where = (_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                 _PROCESS_ID.value)
        # Multi-process: supervised, a lost or stalled peer stops it (exit 75).
        faults.start(_MODE.value, _WORKDIR.value, *where, heartbeat_timeout_s=_HEARTBEAT.value,
                     shutdown_timeout_s=_SHUTDOWN.value,
                     initialization_timeout_s=_INIT_TIMEOUT.value)
        bound = exit_bound.bound(_EXIT_TIMEOUT.value)
    except ValueError as e:
        raise app.UsageError(str(e))
    with bound:             # ends within --exit_timeout of the work, whatever readers do
        run.run(_MODE.value, _CONFIG.value, _WORKDIR.value, step=step)
        distributed.mark_finished()


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    config_util.check_overrides()
    app.run(main)
