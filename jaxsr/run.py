"""What `jaxsr.main` does in each mode, importable for tests and notebooks."""
import logging
import os
import sys

from jaxsr.errors import USER_ERRORS


def run(mode: str, config, workdir: str, step: int | None = None,
        compile_options: dict | None = None):
    """`step`: the checkpoint to evaluate (default: the latest); train always resumes from
    the latest. `compile_options`: keyword arguments of `aot.run_compile` (mode compile)."""
    try:
        return _dispatch(mode, config, workdir, step, compile_options or {})
    except USER_ERRORS as e:
        if os.environ.get("JAXSR_TRACEBACK"):
            raise
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(f"error: {e}")


def _dispatch(mode: str, config, workdir: str, step: int | None, compile_options: dict):
    if step is not None and mode != "evaluate":
        raise ValueError(f"--step applies to --mode evaluate, not {mode!r} (training resumes "
                         "from the latest checkpoint; move a damaged one out of "
                         "DIR/checkpoints to resume from the one before)")
    if mode == "train":
        from jaxsr import train
        return train.train(config, workdir)
    if mode == "evaluate":
        from jaxsr import evaluate, faults
        with faults.guard():    # multi-process: a lost peer stops it with its message
            return evaluate.evaluate(config, workdir, step=step)
    if mode == "info":
        from jaxsr import summary
        return summary.write_info(config, workdir)
    if mode == "compile":
        from jaxsr import aot
        return aot.run_compile(config, workdir=workdir, **compile_options)
    raise ValueError(f"unknown mode {mode!r}")
