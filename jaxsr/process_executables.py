"""The persistent compilation cache for programs that run on one process's own devices,
in processes other than 0.

Why: JAX's persistent cache is written by process 0 alone (`jaxsr.compile_cache`), and its
key includes the devices a program runs on. A program of the whole mesh (the train step)
has the same key in every process, so every process of a relaunch loads it. The
evaluation forward does not: `jaxsr.eval_engine` runs it on each process's own devices,
one executable per input shape and device, so process k > 0 never finds an entry and
compiled its shapes again at every launch (a 2-process B100 evaluation: its 2 shapes, about
0.3-0.5 s on the 2-core VM each launch; a paper model's eval shapes take minutes on a TPU
host). Here such a process keeps its own entries, under `<cache dir>/process-<k>/`, with
JAX's thresholds (a program that compiles faster than
`jax_persistent_cache_min_compile_time_secs` is not kept, as in process 0).

Key: the program's StableHLO without source locations, the devices (ids and kind), the
backend's platform version, the jax/jaxlib versions and the XLA_FLAGS / LIBTPU_INIT_ARGS
of the process. Trust: as JAX's own entries, an entry is machine code that the next launch
runs; it lives in the folder of the cache the run already uses.
"""
import hashlib
import logging
import os
import time

import jax
import jaxlib

from jaxsr import fileio, paths

_ENV_KEYS = ("XLA_FLAGS", "LIBTPU_INIT_ARGS")


def folder() -> str | None:
    """This process's entry folder, None where JAX's own cache serves it (process 0, one
    process) or no cache is on."""
    directory = jax.config.jax_compilation_cache_dir
    if not directory or jax.process_count() == 1 or jax.process_index() == 0:
        return None
    return paths.join(directory, f"process-{jax.process_index()}")


def cache_key(lowered, devices) -> str:
    digest = hashlib.sha256(lowered.as_text().encode())
    backend = devices[0].client
    for part in ([f"{d.id}:{d.device_kind}" for d in devices]
                 + [backend.platform, backend.platform_version, jax.__version__,
                    jaxlib.__version__] + [os.environ.get(k, "") for k in _ENV_KEYS]):
        digest.update(b"\0" + str(part).encode())
    return digest.hexdigest()


def _load(path: str, lowered, devices):
    from jax.experimental import serialize_executable
    in_tree = jax.tree.structure(lowered.args_info)
    return serialize_executable.deserialize_and_load(
        paths.read_bytes(path), in_tree, lowered.out_tree, backend=devices[0].client,
        execution_devices=list(devices))


def _store(path: str, compiled) -> None:
    from jax.experimental import serialize_executable
    payload = serialize_executable.serialize(compiled)[0]
    with fileio.atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)


def load_or_compile(lowered, devices):
    """`lowered.compile()`, loaded from this process's entries when one is there (and
    stored when it was compiled here). `devices`: the devices the program runs on."""
    where = folder()
    if where is None or not devices:
        return lowered.compile()
    path = paths.join(where, cache_key(lowered, devices))
    try:                    # one read, no exists() first: a round trip less on gs://
        compiled = _load(path, lowered, devices)
        logging.info("process cache hit: %s", path)
        return compiled
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001 - an unreadable entry is compiled again
        logging.warning("process cache entry %s could not be loaded (%s); compiling",
                        path, fileio.describe_error(e))
    start = time.monotonic()
    compiled = lowered.compile()
    seconds = time.monotonic() - start
    if seconds >= jax.config.jax_persistent_cache_min_compile_time_secs:
        try:
            _store(path, compiled)
            logging.info("process cache: stored %s (compiled in %.2f s)", path, seconds)
        except Exception as e:  # noqa: BLE001 - the run goes on without the entry
            logging.warning("process cache: could not store %s (%s)", path,
                            fileio.describe_error(e))
    return compiled
