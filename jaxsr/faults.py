"""A lost or stalled process in a multi-process run (training, `--mode evaluate`, a
multi-process `jaxsr.upscale`): every survivor stops within a bound, with one message.

Without this, JAX's coordination service reacts to a dead task by aborting every other
task from one of its own threads (LOG(FATAL): exit 134, a core dump) after a screen of
"Task N heartbeat timeout" errors, and a survivor blocked in a collective waits until then.
Here:

1. The service runs in recoverable mode (`jax_enable_recoverability`), so it only marks a
   task dead (no heartbeat for `heartbeat_timeout_s`) instead of aborting everyone.
2. `PeerWatch`, a thread in every process during the work, asks the service which
   processes are alive every `poll_s` seconds; when one is missing it reports it and ends
   its process (os._exit: the main thread may sit in a collective that never returns).
3. `guard()` around the work (training loop, evaluation, upscaling): an error of a
   collective in the main thread (gloo: "connection reset by peer") waits for the watch's
   verdict before it counts as an error of the work.
4. `supervise()` (through `start`) forks before JAX starts; the parent waits for the child
   and turns its end into the message (which process was lost, what is kept: the last
   complete checkpoint or the results so far, the command to run again) and exit status
   PEER_LOST_EXIT. A child ended by a signal is
   reported the same way: when the coordinator (process 0) itself vanishes, XLA's client
   aborts the process from its own thread, which no Python code can intercept. Core dumps
   are switched off in the child; SIGTERM/SIGINT/SIGHUP are forwarded to it, and on Linux
   it dies with the supervisor (killing the supervisor's pid kills the run).
5. `jaxsr.watchdog.StepWatchdog` in the training loop: a process that still heartbeats
   but completes no step (a deadlocked input thread, a hung collective) within its limit
   notes 'stalled' with the service (the others' PeerWatch stops them at once) and ends
   the same way.

What a save left half-written is never picked up: Orbax commits a step by renaming its
temporary folder (gs://: a commit_success.txt), and resume reads the latest committed one.
"""
import logging
import os
import resource
import shlex
import signal
import sys
import threading
import time

# EX_TEMPFAIL (sysexits.h): "temporary failure; the user is invited to retry". Training
# errors exit 1, bad usage 1 (absl) or 2; a lost peer exits 75 on every survivor.
PEER_LOST_EXIT = 75

_REPORT_FD = None               # the child's end of the pipe to the supervising parent
# Text of errors that a lost peer raises in the main thread (gloo, gRPC, XLA).
_PEER_ERROR_MARKERS = ("gloo", "connection reset", "unavailable", "heartbeat",
                       "coordination service", "deadline_exceeded", "socket closed",
                       "broken pipe", "connection refused")


def _die_with_parent(parent: int) -> bool:
    """Linux: the child gets SIGKILL when the supervisor dies (a killed host takes both).
    Returns whether that is arranged."""
    try:
        import ctypes
        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:  # PDEATHSIG
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:      # the supervisor died before prctl
        os._exit(PEER_LOST_EXIT)
    return True


def supervise(workdir: str, coordinator_address: str | None, num_processes, process_id,
              mode: str = "train") -> None:
    """Returns in the child (which trains, evaluates or upscales: `mode`); the parent waits
    for it and exits with its status, or with PEER_LOST_EXIT and the message when a peer
    was lost or the child was killed."""
    global _REPORT_FD
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))     # inherited: no core dumps
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        if _die_with_parent(parent):
            # Its own process group: a terminal's Ctrl-C or a group-wide SIGTERM reaches
            # the supervisor only, which forwards it once (not twice).
            os.setpgid(0, 0)
        _REPORT_FD = write_fd
        return
    os.close(write_fd)
    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    report = _read_all(read_fd)
    code = os.waitstatus_to_exitcode(status)
    if code != PEER_LOST_EXIT and (code >= 0 or -code in forwarded):
        # Finished, a training error that printed its own message, or the end a signal
        # sent to this supervisor asked for (Ctrl-C): the child's status, as a shell says it.
        os._exit(code if code >= 0 else 128 - code)
    print(lost_message(report, code, workdir, coordinator_address, num_processes,
                       process_id, mode), file=sys.stderr, flush=True)
    os._exit(PEER_LOST_EXIT)


def start(mode: str, workdir: str, distributed_mode: str = "auto",
          coordinator_address: str | None = None, num_processes: int | None = None,
          process_id: int | None = None, **timeouts) -> bool:
    """`distributed.initialize` for a command (`mode`: train, evaluate, upscale); a
    multi-process one runs under `supervise`, so that a lost or stalled peer gives one
    message and exit status PEER_LOST_EXIT. Returns whether the run is multi-process.
    Must run before any other JAX call."""
    from jaxsr import distributed
    where = (distributed_mode, coordinator_address, num_processes, process_id)
    if mode in _MODES and distributed.wanted(*where):
        supervise(workdir, coordinator_address, num_processes, process_id, mode)
    return distributed.initialize(*where, **timeouts)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace").strip()


def _reachable(address: str | None) -> bool | None:
    if not address or ":" not in address:
        return None
    from jaxsr import distributed
    return distributed.connects(address)


# Per mode: (what stopped, what is kept and how to go on, the error it is not).
_MODES = {
    "train": ("training", "{checkpoint} Nothing after it is used (an unfinished save is "
              "never resumed from). To resume, start every process again with the same "
              "command (another process count works when it divides "
              "config.data.num_shards; docs/distributed.md):", "a training error"),
    "evaluate": ("evaluation", "The sets scored before are in {workdir}/eval/results.json "
                 "(each is written when it is scored); the checkpoints are untouched. To "
                 "score the rest, start every process again with the same command:",
                 "an evaluation error"),
    "upscale": ("upscaling", "The images written before are complete (each is written "
                "atomically). To finish, start every process again with the same command "
                "plus --overwrite (else the outputs already there are refused):",
                "an upscaling error"),
}


def lost_message(report: str, code: int, workdir: str, coordinator_address,
                 num_processes, process_id, mode: str = "train") -> str:
    """The one message of a survivor: who was lost, what is kept, what to run."""
    me = f"process {process_id} of {num_processes}" if process_id is not None else "this process"
    if report:
        what = report
    else:
        how = f"was ended by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
        what = f"{me} {how}"
        if _reachable(coordinator_address) is False:
            what += (f"; the coordinator (process 0 at {coordinator_address}) is gone, so "
                     "process 0 was lost (or this host lost the network)")
    return stop_message(f"multi-process {_MODES.get(mode, _MODES['train'])[0]} stopped: "
                        f"{what}", workdir, mode, "a lost process")


def stop_message(headline: str, workdir: str, mode: str, cause: str) -> str:
    """'jaxsr: <headline>.' + what is kept + the command to run again + the exit status."""
    _, kept, not_this = _MODES.get(mode, _MODES["train"])
    kept = kept.format(workdir=workdir, checkpoint=last_checkpoint(workdir)
                       if mode == "train" else "")
    return (f"jaxsr: {headline}. {kept}\n  " + shlex.join(getattr(sys, "orig_argv", sys.argv))
            + f"\n(exit status {PEER_LOST_EXIT}: {cause}, not {not_this})")


def last_checkpoint(workdir: str) -> str:
    try:
        from jaxsr import checkpoint
        step = checkpoint.latest_step(workdir)
    except Exception as e:      # noqa: BLE001 - the message must come out regardless
        return f"The last complete checkpoint could not be read ({e})."
    if step is None:
        return f"There is no complete checkpoint in {workdir} yet."
    return f"The last complete checkpoint is step {step} in {checkpoint.checkpoint_dir(workdir)}."


def supervised() -> bool:
    """Whether a supervising parent (`supervise`) prints this process's message."""
    return _REPORT_FD is not None


def report_and_exit(text: str) -> None:
    """Ends this process (any thread) with PEER_LOST_EXIT, telling the supervisor why."""
    logging.error("jaxsr: %s", text)
    if _REPORT_FD is not None:
        try:
            os.write(_REPORT_FD, text.encode())
        except OSError:
            pass
    from jaxsr import exit_bound
    exit_bound.flush_and_exit(PEER_LOST_EXIT)


class PeerWatch(threading.Thread):
    """Asks the coordination service every `poll_s` which processes are alive; when one is
    missing (no heartbeat for the service's heartbeat timeout), or the service cannot be
    reached for `heartbeat_s`, ends this process via `report_and_exit`."""

    def __init__(self, client, num_processes: int, process_id: int, heartbeat_s: float):
        super().__init__(name="jaxsr-peer-watch", daemon=True)
        self.client, self.n, self.me = client, num_processes, process_id
        self.heartbeat_s = heartbeat_s
        self.poll_s = max(0.2, min(2.0, heartbeat_s / 5))
        self._halt = threading.Event()

    def check(self) -> str | None:
        """None while every process is alive, else what was lost."""
        from jaxsr import distributed
        live = self.client.get_live_nodes(list(range(self.n)))
        notes = distributed.exit_notes(self.client)
        for note, why in (("stalled", "stalled (its step watchdog fired; its log says "
                                      "where it waited)"),
                          ("failed", "stopped with an error (its log says which)")):
            gone = sorted(i for i, n in notes.items() if n == note and i != self.me)
            if gone:    # a process that ended so, still leaving or gone
                return (f"process {', '.join(map(str, gone))} of {self.n} {why}; "
                        f"process {self.me} stopped")
        missing = sorted(i for i in range(self.n)
                         if i not in live and notes.get(i) != "finished")
        if missing:
            return (f"process{'es' if len(missing) > 1 else ''} "
                    f"{', '.join(map(str, missing))} of {self.n} "
                    f"{'were' if len(missing) > 1 else 'was'} lost (no heartbeat for "
                    f"{self.heartbeat_s:g} s; process {self.me} stopped)")
        return None

    def run(self):
        unreachable_since = None
        while not self._halt.wait(self.poll_s):
            try:
                lost = self.check()
                unreachable_since = None
            except Exception as e:      # noqa: BLE001 - any RPC failure: the service is away
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since < self.heartbeat_s:
                    continue
                lost = (f"the coordination service (process 0) could not be reached for "
                        f"{self.heartbeat_s:g} s: process 0 was lost [{str(e)[:200]}]")
            if lost and not self._halt.is_set():
                report_and_exit(lost)

    def stop(self):
        self._halt.set()


def is_peer_error(error: BaseException) -> bool:
    """An error that a lost peer raises in a collective or a coordination-service call."""
    import jax
    from jaxsr import errors
    if errors.is_out_of_memory(error):      # this process's own failure: no waiting
        return False
    text = str(error).lower()
    return isinstance(error, jax.errors.JaxRuntimeError) or any(
        m in text for m in _PEER_ERROR_MARKERS)


class guard:
    """Around the training loop of a multi-process run: runs a PeerWatch, and lets an error
    that a lost peer may have caused wait for its verdict (up to the heartbeat timeout and
    a margin) before it is raised as a training error."""

    def __init__(self, heartbeat_s: float | None = None):
        from jaxsr import distributed
        self.watch = None
        client = distributed.coordination_client()
        if client is not None:
            import jax
            self.watch = PeerWatch(client, jax.process_count(), jax.process_index(),
                                   heartbeat_s or distributed.settings()["heartbeat_timeout_s"])

    def __enter__(self):
        if self.watch is not None:
            self.watch.start()
        return self

    def __exit__(self, kind, error, tb):
        if self.watch is None:
            return False
        if error is not None and is_peer_error(error):
            logging.warning("a collective failed (%s); waiting up to %g s for the "
                            "coordination service to say whether a process was lost",
                            str(error).splitlines()[0][:200], self.watch.heartbeat_s)
            deadline = time.monotonic() + self.watch.heartbeat_s + 3 * self.watch.poll_s + 5
            while time.monotonic() < deadline and self.watch.is_alive():
                time.sleep(self.watch.poll_s)   # the watch ends the process when it is so
        self.watch.stop()
        return False

