"""How commands sort errors: the user's input (one clear line, no traceback), one item's
failure (the command goes on with the rest) or a bug. Below every command module
(run, evaluate, upscale) so that they all import it and none imports another for it."""
from jaxsr import checkpoint, paths
from jaxsr.data import images


class PartialFailure(RuntimeError):
    """The command finished what it could; the message lists what failed (exit status 1)."""


def is_out_of_memory(error: BaseException) -> bool:
    """MemoryError, or XLA's RESOURCE_EXHAUSTED / out-of-memory runtime error."""
    text = str(error)
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and ("RESOURCE_EXHAUSTED" in text
                                             or "out of memory" in text.lower()))


# Errors that are the user's input, not a bug: printed as one clear line, no traceback
# (set JAXSR_TRACEBACK=1 to see it anyway).
USER_ERRORS = (FileNotFoundError, FileExistsError, images.ImageReadError,
               checkpoint.CheckpointMismatchError, checkpoint.DamagedCheckpointError,
               checkpoint.CheckpointWriteError, paths.StorageError,
               PartialFailure, ValueError, KeyError, ArithmeticError)


def is_recoverable(error: BaseException) -> bool:
    """Errors of one item (an image, a set) after which a command can go on with the rest."""
    return is_out_of_memory(error) or isinstance(error, (OSError,) + USER_ERRORS)
