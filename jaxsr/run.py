"""What `jaxsr.main` does in each mode, importable for tests and notebooks."""
import logging
import os
import sys

from jaxsr import checkpoint
from jaxsr.data import images

# Errors that are the user's input, not a bug: printed as one clear line, no traceback
# (set JAXSR_TRACEBACK=1 to see it anyway).
USER_ERRORS = (FileNotFoundError, FileExistsError, images.ImageReadError,
               checkpoint.CheckpointMismatchError, ValueError, KeyError, ArithmeticError)


def run(mode: str, config, workdir: str):
    try:
        return _dispatch(mode, config, workdir)
    except USER_ERRORS as e:
        if os.environ.get("JAXSR_TRACEBACK"):
            raise
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(f"error: {e}")


def _dispatch(mode: str, config, workdir: str):
    if mode == "train":
        from jaxsr import train
        return train.train(config, workdir)
    if mode == "evaluate":
        from jaxsr import evaluate
        return evaluate.evaluate(config, workdir)
    if mode == "info":
        from jaxsr import summary
        return summary.write_info(config, workdir)
    raise ValueError(f"unknown mode {mode!r}")
