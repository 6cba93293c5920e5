"""What `jaxsr.main` does in each mode, importable for tests and notebooks."""
import logging
import os
import sys

from jaxsr import checkpoint
from jaxsr.data import images


class PartialFailure(RuntimeError):
    """The command finished what it could; the message lists what failed (exit status 1)."""


def is_out_of_memory(error: BaseException) -> bool:
    """MemoryError, or XLA's RESOURCE_EXHAUSTED / out-of-memory runtime error."""
    text = str(error)
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and ("RESOURCE_EXHAUSTED" in text
                                             or "out of memory" in text.lower()))


def is_recoverable(error: BaseException) -> bool:
    """Errors of one item (an image, a set) after which a command can go on with the rest."""
    return is_out_of_memory(error) or isinstance(error, (OSError,) + USER_ERRORS)


# Errors that are the user's input, not a bug: printed as one clear line, no traceback
# (set JAXSR_TRACEBACK=1 to see it anyway).
USER_ERRORS = (FileNotFoundError, FileExistsError, images.ImageReadError,
               checkpoint.CheckpointMismatchError, checkpoint.DamagedCheckpointError,
               checkpoint.CheckpointWriteError,
               PartialFailure, ValueError, KeyError, ArithmeticError)


def run(mode: str, config, workdir: str, step: int | None = None):
    """`step`: the checkpoint to evaluate (default: the latest); train always resumes from
    the latest."""
    try:
        return _dispatch(mode, config, workdir, step)
    except USER_ERRORS as e:
        if os.environ.get("JAXSR_TRACEBACK"):
            raise
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(f"error: {e}")


def _dispatch(mode: str, config, workdir: str, step: int | None):
    if step is not None and mode != "evaluate":
        raise ValueError(f"--step applies to --mode evaluate, not {mode!r} (training resumes "
                         "from the latest checkpoint; move a damaged one out of "
                         "DIR/checkpoints to resume from the one before)")
    if mode == "train":
        from jaxsr import train
        return train.train(config, workdir)
    if mode == "evaluate":
        from jaxsr import evaluate
        return evaluate.evaluate(config, workdir, step=step)
    if mode == "info":
        from jaxsr import summary
        return summary.write_info(config, workdir)
    raise ValueError(f"unknown mode {mode!r}")
