"""Step watchdog: a training process that still heartbeats but completes no step (a
deadlocked input thread, storage that stopped answering, a hung collective) ends with one
message and exit status faults.PEER_LOST_EXIT, and so do the other processes of the run
(jaxsr.faults.PeerWatch reads its 'stalled' note). docs/reliability.md, "Stalls and exits".
"""
import os
import sys
import threading
import time
import traceback

from jaxsr import faults

# The training loop's wait for its input (jaxsr.train.device_batches).
_INPUT_WAIT = "device_batches"


def main_thread_at() -> tuple[str, bool]:
    """(where the main thread waits: its innermost jaxsr frame and the innermost frame,
    whether that is a wait for the training input)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return "an unknown place", False
    stack = traceback.extract_stack(frame)
    ours = [f for f in stack if f"{os.sep}jaxsr{os.sep}" in f.filename]
    at = [f"{'jaxsr' + f.filename.rsplit(os.sep + 'jaxsr', 1)[1]}:{f.lineno} ({f.name})"
          for f in ours[-1:]]
    if not ours or stack[-1] is not ours[-1]:
        at.append(f"{os.path.basename(stack[-1].filename)}:{stack[-1].lineno} "
                  f"({stack[-1].name})")
    return " -> ".join(at), any(f.name == _INPUT_WAIT for f in ours)


class StepWatchdog(threading.Thread):
    """Ends the run when no training step completes within its limit.

    Fed by the training loop after each step is dispatched (`step_done`); a deadlocked
    input thread or a hung collective stops the feed. Dispatch is asynchronous, so the
    step time is measured between the host's waits for the devices (log steps: the devices
    have then caught up), over the run so far, leaving out spans with validation or a
    save. The limit of a step is `factor` x that step time, at least `min_s`; a step after
    which the host waits (`waits`: log, save, validation) may take that for every step
    dispatched since the last wait (they finish in it). The first steps (compiles; until
    a step time is measured) and a `slow` one (validation, a checkpoint save) get
    `floor_s`. On a stall it names this process, where its main thread waits and the last
    complete checkpoint, notes the stall with the coordination service (the others'
    PeerWatch stops them at once) and exits with faults.PEER_LOST_EXIT. With several processes
    one whose main thread waits for the devices, not its input, first gives a peer whose
    input stalled one more limit to say so (then reports that peer). factor 0: off.
    """

    def __init__(self, factor: float, floor_s: float, min_s: float, workdir: str):
        super().__init__(name="jaxsr-step-watchdog", daemon=True)
        for key, value in (("watchdog_factor", factor), ("watchdog_floor_s", floor_s),
                           ("watchdog_min_s", min_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    value >= 0 if key == "watchdog_factor" else value > 0):
                raise ValueError(f"config.train.{key}={value!r}: give a number > 0 "
                                 "(watchdog_factor: a multiple of the step time, 0 "
                                 "switches the watchdog off)")
        self.factor, self.floor_s, self.min_s = float(factor), float(floor_s), float(min_s)
        self.workdir = workdir
        self.poll_s = max(0.1, min(2.0, self.min_s / 4))
        self._span_s, self._span_steps = 0.0, 0     # measured between the host's waits
        self._synced = None         # (time, step) when the devices had last caught up
        self._last, self._step, self._waited_at = time.monotonic(), None, 0
        self._kind, self._pending = "slow", 1       # the current interval: 'step' |
        self._halt = threading.Event()              # 'waits' | 'slow'; steps it finishes

    @classmethod
    def from_config(cls, train_config, workdir: str) -> "StepWatchdog":
        get = train_config.get
        return cls(get("watchdog_factor", 0.0), get("watchdog_floor_s", 900.0),
                   get("watchdog_min_s", 60.0), workdir)

    def step_done(self, step: int, waits: bool = False, slow: bool = False) -> None:
        """Step `step` was dispatched; then the host waits for the devices (`waits`),
        and validates or saves (`slow`)."""
        now = time.monotonic()
        if self._kind == "waits" and self._synced is not None:
            t0, s0 = self._synced               # the devices caught up with self._step
            self._span_s += now - t0
            self._span_steps += self._step - s0
        if self._kind != "step":
            self._synced = None if self._step is None else (now, self._step)
        if self._step is None:                  # a resumed run starts at its step
            self._waited_at = step - 1
        self._kind = "slow" if slow else "waits" if waits else "step"
        self._pending = step - self._waited_at if waits else 1
        if waits or slow:
            self._waited_at = step
        self._last, self._step = now, step

    def limit(self) -> tuple[float, str]:
        """(seconds, why) the current step may take."""
        if self._kind == "slow" or not self._span_steps:
            return self.floor_s, (f"config.train.watchdog_floor_s={self.floor_s:g}, for "
                                  "compiles, validation and checkpoint saves")
        typical = self._span_s / self._span_steps
        return max(self.min_s, self.factor * typical * self._pending), (
            f"config.train.watchdog_factor={self.factor:g} x the measured step time "
            f"{typical:.3g} s x {self._pending} step(s) in flight, at least "
            f"config.train.watchdog_min_s={self.min_s:g}")

    def run(self):
        import jax
        multi_process = jax.process_count() > 1
        while not self._halt.wait(self.poll_s):
            waited = time.monotonic() - self._last
            limit, why = self.limit()
            if waited <= limit or self._halt.is_set():
                continue
            earlier = self._peer_verdict()
            if earlier:             # a peer that stalled or was lost first is the cause
                faults.report_and_exit(earlier)
            at, for_input = main_thread_at()
            if multi_process and not for_input and waited <= 2 * limit:
                continue    # waits for the devices: a peer whose input stalled says so first
            self._stalled(waited, limit, why, at)

    def _peer_verdict(self) -> str | None:
        """What the coordination service says of the other processes (PeerWatch.check),
        None in a one-process run or when the service cannot be asked."""
        import jax
        from jaxsr import distributed
        client = distributed.coordination_client()
        if client is None:
            return None
        try:
            return faults.PeerWatch(client, jax.process_count(), jax.process_index(),
                             distributed.settings()["heartbeat_timeout_s"]).check()
        except Exception:  # noqa: BLE001 - the service is away: this stall is the news
            return None

    def _stalled(self, waited: float, limit: float, why: str, at: str) -> None:
        import jax
        from jaxsr import distributed
        after = f"step {self._step}" if self._step is not None else "the start"
        text = (f"process {jax.process_index()} of {jax.process_count()} stalled: no "
                f"training step completed for {waited:.0f} s after {after} (limit "
                f"{limit:.3g} s: {why}); its main thread waits in {at}")
        distributed.note_exit("stalled")
        distributed.outlive_others(5)   # process 0: the others read the note first
        if not faults.supervised():    # no supervisor: the message is this process's
            print(faults.stop_message(f"training stalled: {text}", self.workdir, "train",
                               "a stalled run"), file=sys.stderr, flush=True)
        faults.report_and_exit(text)

    def __enter__(self):
        if self.factor:
            self._last = time.monotonic()
            self.start()
        return self

    def __exit__(self, *exc):
        self._halt.set()

