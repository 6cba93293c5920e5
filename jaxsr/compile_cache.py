"""JAX's persistent compilation cache for `jaxsr.main` runs: compile once per run, not once
per launch.

A relaunch of a run (after a spot preemption, a crash, or to train further) traces the same
programs again; with the cache on, process 0 stores each compiled executable under a key
of the program, the compile options, the devices and the jax/XLA versions, and the next
launch loads it instead of compiling (log line "Persistent compilation cache hit for
'jit_train_step'").

Where (`resolve`): `--compile_cache DIR`, else `config.compile_cache_dir`, else the
JAX_COMPILATION_CACHE_DIR a user exported, else `<workdir>/compile_cache`. The workdir is
the one path every process of a run already shares (its checkpoints are there, local or
`gs://`), it outlives a preempted VM, and a cache there serves exactly that run -- runs and
tests never share entries unless a folder is named for them. 'none' turns the cache off.

Who writes: JAX itself writes entries only from process 0 (`jax._src.compiler._cache_write`:
"Not writing persistent cache entry since process_id != 0"); every process reads. The
programs of one process's own devices, keyed by them, are kept per process by
`jaxsr.process_executables`.

Trust: an entry is machine code that the next launch runs. Keep the folder (a `gs://`
cache included) where only you can write, e.g. inside your own bucket or the workdir.
"""
import logging
import os

import jax

from jaxsr import paths

DEFAULT_SUBDIR = "compile_cache"
OFF = ("none", "off")
ENV_DIR = "JAX_COMPILATION_CACHE_DIR"
# JAX logs hits and misses at DEBUG; these are the lines worth seeing at INFO.
_SHOWN = ("Persistent compilation cache hit", "PERSISTENT COMPILATION CACHE MISS",
          "Not writing persistent cache entry")


def resolve(flag: str | None, config_dir: str, workdir: str) -> str | None:
    """The cache folder for this launch (None: off); precedence as in the module doc."""
    chosen = (flag or config_dir or os.environ.get(ENV_DIR, "")).strip()
    if chosen.lower() in OFF:
        return None
    return paths.absolute(chosen or paths.join(paths.absolute(workdir), DEFAULT_SUBDIR))


class _CacheLines(logging.Filter):
    """Lets through only JAX's cache hit/miss/not-written lines, raised to INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_SHOWN):
            return False
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _log_cache_lines() -> None:
    logger = logging.getLogger("jax._src.compiler")
    if not any(isinstance(f, _CacheLines) for f in logger.filters):
        logger.addFilter(_CacheLines())
    logger.setLevel(logging.DEBUG)


def enable(directory: str) -> None:
    """Turns the persistent cache on for this process; call before its first compile (JAX
    opens the cache once, at the first compile). The size and compile-time thresholds are
    JAX's (or JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS / _MIN_ENTRY_SIZE_BYTES): by
    default a program that compiles in under 1 s is not stored."""
    jax.config.update("jax_compilation_cache_dir", directory)
    if paths.is_remote(directory):
        # XLA:GPU's own autotune/kernel caches are C++ file paths: no gs:// there.
        jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    _log_cache_lines()
    logging.info("compilation cache: %s (process 0 writes, every process reads)", directory)


def disable() -> None:
    jax.config.update("jax_compilation_cache_dir", None)
    logging.info("compilation cache: off")


def setup(flag: str | None, config, workdir: str, mode: str) -> str | None:
    """The cache of a `jaxsr.main` launch of `mode`: on for train and evaluate (the
    programs a relaunch needs again), off for `--mode compile`, whose job is to measure
    compiling, and `info`. Returns the folder in use (None: off)."""
    directory = None
    if mode in ("train", "evaluate") or flag:
        directory = resolve(flag, str(config.get("compile_cache_dir", "") or ""), workdir)
    if directory is None:
        disable()
    else:
        enable(directory)
    return directory
