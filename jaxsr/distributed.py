"""Multi-process runs: `jax.distributed` start-up, the primary process, agreed preemption.

One JAX process runs per host (TPU VM worker, GPU node, or a test's subprocess). Every
process runs the same program on its own share of the data; parameters are replicated over
the mesh of all processes' devices, and XLA's collectives (ICI/NCCL/gloo) sum the gradients.
Files that describe the run (config.json, metrics, TensorBoard, evaluation results) are
written by process 0 only; all processes take part in Orbax's saves and restores.
"""
import logging
import os
import signal

import jax

MODES = ("auto", "on", "off")

# Environments whose launchers start one process per host and tell it so.
_MULTI_PROCESS_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _launcher_says_multi_process() -> bool:
    for var in _MULTI_PROCESS_ENV:
        if os.environ.get(var, "1").isdigit() and int(os.environ.get(var, "1")) > 1:
            return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES")
    return bool(hosts and "," in hosts) or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def _env_int(name: str):
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"environment variable {name}={value!r} is not a non-negative integer")
    return int(value)


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Starts `jax.distributed` when the run is multi-process; returns whether it did.

    mode 'on' always initialises (arguments left None are found by JAX's cluster detection:
    Cloud TPU, SLURM, Open MPI, Kubernetes); 'off' never; 'auto' initialises when an address
    or process count is given (arguments, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID) or a launcher reports several processes. Must run before any other JAX
    call in the process. On CPU the collectives go through gloo (unless
    JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise).
    """
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r}: use one of {MODES}")
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if mode == "off" or (mode == "auto" and not explicit and not _launcher_says_multi_process()):
        return False
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True


def is_primary() -> bool:
    """Process 0: the one that writes config, logs and results."""
    return jax.process_index() == 0


class Preemption:
    """Tells the loop when to checkpoint and stop after SIGTERM (preemption).

    One process: a SIGTERM handler sets a flag, read after the step in flight. Several
    processes: JAX's preemption sync point (the coordination service's own SIGTERM
    notifier) picks one step that every process reaches, so all save the same step; a
    Python handler would replace JAX's notifier, so none is installed then.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._multi_process = jax.process_count() > 1

    def __enter__(self):
        if not self._multi_process:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:          # not in the main thread: no handler
                self._previous = None
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: checkpointing and stopping")
        self.requested = True

    def reached(self, step: int) -> bool:
        """Called once per step by every process with the same step numbers."""
        if self._multi_process and not self.requested:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                logging.warning("preemption agreed by all processes at step %d", step)
                self.requested = True
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
