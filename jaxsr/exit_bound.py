"""A finished command ends even when a reader thread never returns (jaxsr.main, jaxsr.upscale,
and pytest's own exit: tests/conftest.py).

Interpreter shutdown joins every non-daemon thread before it exits. Grain's prefetch
threads are such threads (concurrent.futures workers); one blocked forever in a read
(ArrayRecord from a Cloud Storage server that stopped answering, a FIFO nobody writes)
holds the process forever after its work is done. `exit_bound` around the work bounds
that wait; nothing is cut that the work needs, because it runs after the work returned:
Orbax saves are waited for (train.train's finally), results and logs are written.
"""
import atexit
import logging
import os
import sys
import threading

EXIT_GRACE_S = 10.0   # default of jaxsr.main's --exit_timeout


def _awaited_threads() -> list[threading.Thread]:
    """The threads the exiting main thread waits for (non-daemon, alive)."""
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive()]


def flush_and_exit(status: int) -> None:
    """Ends the process now (from any thread: no joins, no exit handlers) after flushing
    stdout and stderr."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def end_within(status: int, grace_s: float = EXIT_GRACE_S) -> None:
    """Called when the work is done (checkpoints committed, results written):
    the process ends within `grace_s` of the interpreter's own exit, with `status`.

    Interpreter shutdown first joins every non-daemon thread, e.g. Grain's prefetch
    threads; one blocked forever in a read from storage that stopped answering (an
    ArrayRecord read from a stopped server) would hold the exit forever. A daemon timer
    started here, cancelled by the first atexit handler (which runs once every thread
    has been joined), otherwise names the threads still running after `grace_s`, leaves
    the coordination service in order, runs the atexit handlers (log flushes) for up to
    `grace_s` more and ends the process with `status`.
    """
    done = threading.Event()

    def bound():
        if done.wait(grace_s):
            return
        from jaxsr import distributed
        logging.warning("jaxsr: the work is done, but %s still running %g s later (e.g. "
                        "a data reader blocked on storage that stopped answering); ending "
                        "the process with exit status %d without them",
                        ", ".join(sorted({t.name for t in _awaited_threads()})) or "a thread",
                        grace_s, status)
        distributed.leave()
        handlers = threading.Thread(target=atexit._run_exitfuncs, daemon=True,
                                    name="jaxsr-atexit")
        handlers.start()
        handlers.join(grace_s)
        flush_and_exit(status)

    atexit.register(done.set)       # the last registered runs first, after the joins
    threading.Thread(target=bound, name="jaxsr-exit-bound", daemon=True).start()


class bound:
    """Around a command's work (jaxsr.main, jaxsr.upscale): when it ends, `end_within`
    with the status the process is about to exit with (0, a SystemExit's, 1 for an
    error, 130 for Ctrl-C)."""

    def __init__(self, grace_s: float = EXIT_GRACE_S):
        if not grace_s > 0:
            raise ValueError(f"--exit_timeout={grace_s!r}: give a number of seconds > 0")
        self.grace_s = grace_s

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        status = 0
        if isinstance(error, SystemExit):
            status = error.code if isinstance(error.code, int) else int(error.code is not None)
        elif isinstance(error, KeyboardInterrupt):
            status = 130
        elif error is not None:
            status = 1
        end_within(status, self.grace_s)
        return False
