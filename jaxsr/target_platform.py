"""The platform a program is traced for: `jax.default_backend()`, unless ahead-of-time
compilation (jaxsr.aot) traces for another one, e.g. a TPU slice from this CPU machine.

Code that picks a different formulation per platform at trace time (the looped attention
and hashing on CPU, the FFT blur on CPU) asks `current()` rather than
`jax.default_backend()`, so a program compiled for a TPU from a CPU host is the program
a TPU host would trace.
"""
import contextlib

import jax

_override = [None]


def current() -> str:
    """'cpu', 'gpu' or 'tpu': the platform being traced for."""
    return _override[0] or jax.default_backend()


@contextlib.contextmanager
def tracing_for(platform: str | None):
    """Within the block, `current()` is `platform` (None: the default backend)."""
    before, _override[0] = _override[0], platform
    try:
        yield
    finally:
        _override[0] = before
