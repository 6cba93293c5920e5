"""Multi-process runs: `jax.distributed` start-up, the primary process, agreed preemption.

One JAX process runs per host (TPU VM worker, GPU node, or a test's subprocess). Every
process runs the same program on its own share of the data; parameters are replicated over
the mesh of all processes' devices, and XLA's collectives (ICI/NCCL/gloo) sum the gradients.
Files that describe the run (config.json, metrics, TensorBoard, evaluation results) are
written by process 0 only; all processes take part in Orbax's saves and restores.
"""
import atexit
import logging
import os
import signal
import socket
import threading
import time

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


def wanted(mode: str = "auto", coordinator_address: str | None = None,
           num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Whether `initialize` with these arguments starts a multi-process run."""
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r}: use one of {MODES}")
    explicit = any(v is not None for v in (
        coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"),
        num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES"),
        process_id if process_id is not None else _env_int("JAX_PROCESS_ID")))
    return mode == "on" or (mode == "auto" and (explicit or _launcher_says_multi_process()))


# Coordination-service timeouts (seconds). The heartbeat is JAX's default: a pod tolerates
# network blips this long before a silent process counts as lost.
DEFAULT_HEARTBEAT_S = 100
DEFAULT_SHUTDOWN_S = 300
DEFAULT_INIT_S = 300
# The timeouts of this run (jaxsr.faults reads the heartbeat one).
_SETTINGS = {"heartbeat_timeout_s": DEFAULT_HEARTBEAT_S,
             "shutdown_timeout_s": DEFAULT_SHUTDOWN_S,
             "initialization_timeout_s": DEFAULT_INIT_S}


def settings() -> dict:
    return dict(_SETTINGS)


def coordination_client():
    """JAX's coordination-service client of a multi-process run, else None."""
    if jax.process_count() <= 1:
        return None
    from jax._src import distributed as jax_distributed
    return jax_distributed.global_state.client


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None, *,
               heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_S,
               shutdown_timeout_s: int = DEFAULT_SHUTDOWN_S,
               initialization_timeout_s: int = DEFAULT_INIT_S) -> bool:
    """Starts `jax.distributed` when the run is multi-process; returns whether it did.

    mode 'on' always initialises (arguments left None are found by JAX's cluster detection:
    Cloud TPU, SLURM, Open MPI, Kubernetes); 'off' never; 'auto' initialises when an address
    or process count is given (arguments, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID) or a launcher reports several processes. Must run before any other JAX
    call in the process. On CPU the collectives go through gloo (unless
    JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise).

    Timeouts (seconds, JAX's coordination service): `heartbeat_timeout_s`, after which a
    silent process counts as lost and every other one stops (jaxsr.faults);
    `shutdown_timeout_s`, how long a finishing process waits for the others at exit;
    `initialization_timeout_s`, how long the processes wait for each other at start-up.
    """
    if not wanted(mode, coordinator_address, num_processes, process_id):
        return False
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    for name, value in (("heartbeat_timeout_s", heartbeat_timeout_s),
                        ("shutdown_timeout_s", shutdown_timeout_s),
                        ("initialization_timeout_s", initialization_timeout_s)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"--{name}={value!r}: give a whole number of seconds >= 1")
        _SETTINGS[name] = value
    # Recoverable: a dead task is only marked dead, instead of the service aborting every
    # other task (exit 134, core dump); jaxsr.faults then stops them with a message.
    jax.config.update("jax_enable_recoverability", True)
    if coordinator_address and process_id:
        wait_for_coordinator(coordinator_address, initialization_timeout_s)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=initialization_timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s,
                               shutdown_timeout_seconds=shutdown_timeout_s)
    atexit.register(leave)     # runs before JAX's own (registered earlier)
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


EXIT_KEY = "jaxsr/exit/{}"        # coordination-service key: how a process ended
_finished = False


def connects(address: str, timeout_s: float = 2.0) -> bool:
    """Whether a TCP connection to `address` ('host:port', '[v6]:port') opens."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                      timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_coordinator(address: str, timeout_s: float, poll_s: float = 0.02) -> bool:
    """Waits until the coordination service (process 0) accepts TCP connections at
    `address`, at most `timeout_s`; returns whether it did.

    Why: a process whose client dials before the service listens meets gRPC's first
    reconnect backoff, 1 s, and every process then waits that second in the start-up
    barrier (measured: 1.0 s in about half of simultaneous 2-process launches, 0.01-0.26 s
    after this wait). When the wait times out, JAX's own initialisation reports the error."""
    deadline = time.monotonic() + timeout_s
    while not connects(address, 0.2):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def mark_finished() -> None:
    """This process's command completed (its exit is no loss to the others)."""
    global _finished
    _finished = True


def exit_notes(client) -> dict[int, str]:
    """{process: 'finished' | 'failed' | 'stalled'} of the processes that are leaving or
    left the run (through `leave`, or `note_exit` of the step watchdog; one
    RPC, however many processes)."""
    notes = {}
    for key, value in client.key_value_dir_get(EXIT_KEY.format("")):
        tail = key.rstrip("/").rsplit("/", 1)[-1]
        if tail.isdigit():
            notes[int(tail)] = value
    return notes


def note_exit(how: str, timeout_s: float = 5.0) -> None:
    """Tells the coordination service how this process ends ('stalled': jaxsr.faults's
    step watchdog), for the other processes' PeerWatch. From any thread, bounded: the
    RPC runs in a daemon thread given `timeout_s` (the service may be gone)."""
    from jax._src import distributed as jax_distributed
    client = jax_distributed.global_state.client
    if client is None:
        return

    def tell():
        try:
            client.key_value_set(EXIT_KEY.format(jax.process_index()), how)
        except Exception as e:  # noqa: BLE001 - the service is gone: the heartbeat tells
            logging.warning("could not note the exit (%s) with the coordination service: %s",
                            how, str(e)[:300])

    teller = threading.Thread(target=tell, name="jaxsr-exit-note", daemon=True)
    teller.start()
    teller.join(timeout_s)


def leave() -> None:
    """Leaves the coordination service in order: the service (in process 0) must outlive
    every other process's disconnect. In recoverable mode (jaxsr.faults) JAX's own exit has
    no shutdown barrier, so a process 0 that finished first took the service away and the
    others aborted in their exit. Each process first notes how it ends, which tells the
    PeerWatch of a process still running that this one finished, not died."""
    from jax._src import distributed as jax_distributed
    client = jax_distributed.global_state.client
    if client is None:
        return
    note_exit("finished" if _finished else "failed")
    # Finished: the others finish too, keep the service until they are gone. Failed: only
    # long enough for their watch to read the note (faults.PeerWatch).
    outlive_others(_SETTINGS["shutdown_timeout_s"] if _finished else 5)
    jax.distributed.shutdown()


def outlive_others(seconds: float) -> None:
    """In process 0, which hosts the coordination service: waits up to `seconds` while
    other processes are still connected (their PeerWatch reads this one's exit note
    first; without the service they would abort)."""
    from jax._src import distributed as jax_distributed
    client = jax_distributed.global_state.client
    if client is None or jax.process_index() != 0:
        return
    everyone = list(range(jax.process_count()))
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and len(client.get_live_nodes(everyone)) > 1:
            time.sleep(0.1)
    except Exception as e:  # noqa: BLE001 - the service is gone: nothing left to order
        logging.warning("coordination service at exit: %s", str(e)[:300])
