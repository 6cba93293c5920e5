"""The images of a set spread over every device of every process, one image per device at
a time, and the per-image results gathered to every process: the engine under
jaxsr.evaluate, jaxsr.validation and jaxsr.upscale.

Dealing (`deal`): the items are ordered by their padded LR shape (then by index) and cut
into contiguous runs of about equal pixel count, one run per global slot (local device l
of process p is slot p * L + l). Every process computes the same deal from the shapes
alone. A device so meets only a few of a set's shapes, and compiles only those, in
parallel with the other devices (Urban100 x2 has 37 LR shapes: 37 compiles on one device,
at most 10 per device on 8, 4 on 32; docs/protocol.md lists the counts). A process takes
one CPU device, all its accelerators (`eval_devices`), one thread each.

Exactness: every image runs alone, at its own shape (padded as on one device: the model's
input multiple and config.eval.pad_to), through the same compiled program, so its SR
output and its metrics are bit-identical to a one-device run's for any number of
processes and devices. Chop, tiles and self-ensemble run per image on its device. The
only collective is the gather of the rows at the end (`gather`: JSON, whose floats round-
trip exactly, through `multihost_utils.process_allgather`); a process that is lost before
it is caught by jaxsr.faults, as in training.

An item whose work raises becomes an error row: after the gather every process raises the
same kind of error (ItemFailed when the error is one an evaluation recovers from,
jaxsr.errors.is_recoverable; else RuntimeError), so all processes go on, or stop,
together. On a terminal process 0 shows a bar over the items of all processes (a counter
in the coordination service's key-value store).
"""
import json
import sys
import threading
import time
from typing import Callable, Sequence

import jax
import numpy as np

from jaxsr import errors, fileio

_runs = [0]        # calls of `run`: the same sequence on every process (progress keys)


class ItemFailed(errors.PartialFailure):
    """An item of a spread run failed (on this or another process); the message names it."""


def deal(costs: Sequence[float], keys: Sequence, n_slots: int) -> list[list[int]]:
    """Item indices per slot: ordered by (key, index) and cut into `n_slots` contiguous
    runs of about equal total cost: an item goes to the slot its middle falls in when the
    ordered costs are laid end to end over the slots (fewer items than slots: the
    items spread out, some slots get none)."""
    order = sorted(range(len(costs)), key=lambda i: (keys[i], i))
    total = float(sum(costs)) or 1.0
    runs, acc = [[] for _ in range(n_slots)], 0.0
    for i in order:
        middle = acc + float(costs[i]) / 2
        runs[min(n_slots - 1, int(middle * n_slots / total))].append(i)
        acc += float(costs[i])
    return runs


def eval_devices() -> list:
    """This process's devices that take items: all local accelerators; one CPU device,
    since a process's CPU devices share its cores (XLA already uses them all for one
    device's program) and more of them would only add compiles."""
    local = jax.local_devices()
    return local[:1] if local[0].platform == "cpu" else local


def my_runs(costs, keys, devices=None) -> list[tuple[object, list[int]]]:
    """(device, its item indices) for each of this process's `devices` (default
    `eval_devices()`; every process must have as many)."""
    local = list(devices) if devices is not None else eval_devices()
    runs = deal(costs, keys, jax.process_count() * len(local))
    start = jax.process_index() * len(local)
    return [(d, runs[start + j]) for j, d in enumerate(local)]


def per_device(apply_fn, devices=None) -> dict:
    """{device: `apply_fn` with its params on that device} for `devices` (default
    `eval_devices()`), for a jaxsr.forward.BoundApply; any other function serves every
    device as it is."""
    from jaxsr.forward import BoundApply
    devices = list(devices) if devices is not None else eval_devices()
    if isinstance(apply_fn, BoundApply):
        return {d: apply_fn.on(d) for d in devices}
    return {d: apply_fn for d in devices}


def _error_row(error: BaseException) -> dict:
    return {"error": f"{type(error).__name__}: {fileio.describe_error(error, 1000)}",
            "recoverable": bool(errors.is_recoverable(error)),
            "process": jax.process_index()}


def _run_local(runs, work: Callable, progress) -> tuple[dict, dict]:
    """Each device's items in order, one thread per device; -> ({index: row}, {index:
    exception raised here})."""
    rows, raised = {}, {}

    def one_device(device, items):
        for i in items:
            try:
                rows[i] = work(device, i)
            except Exception as e:  # noqa: BLE001 - every process learns of it (gather)
                rows[i], raised[i] = _error_row(e), e
            progress.advance()

    busy = [(d, items) for d, items in runs if items]
    if len(busy) == 1:
        one_device(*busy[0])
    else:
        threads = [threading.Thread(target=one_device, args=r, daemon=True) for r in busy]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return rows, raised


def gather(rows: dict, n: int) -> list:
    """{index: JSON-able row} of each process -> the list of all `n` rows, on every
    process (one process: no collective)."""
    if jax.process_count() == 1:
        return [rows.get(i) for i in range(n)]
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps({str(k): v for k, v in rows.items()}).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[:data.size] = data
    everyone = multihost_utils.process_allgather(padded)
    out = [None] * n
    for size, buf in zip(np.ravel(sizes), everyone):
        for k, v in json.loads(bytes(buf[:int(size)]).decode()).items():
            out[int(k)] = v
    return out


def raise_failures(rows: list, names: Sequence[str], raised: dict, what: str) -> None:
    """The same error on every process when an item failed (module docstring)."""
    failed = [i for i, r in enumerate(rows) if isinstance(r, dict) and "error" in r]
    if not failed:
        return
    first = rows[failed[0]]
    message = (f"{what}: {len(failed)} of {len(rows)} item(s) failed; {names[failed[0]]} "
               f"(process {first['process']}): {first['error']}")
    if not first["recoverable"] and failed[0] in raised:
        raise raised[failed[0]]
    kind = ItemFailed if first["recoverable"] else RuntimeError
    raise kind(message) from raised.get(failed[0])


def run(costs: Sequence[float], keys: Sequence, work: Callable, *, names: Sequence[str],
        what: str = "items", bar: bool = True, devices=None) -> list:
    """Runs `work(device, i) -> JSON-able row` for every item, spread (module docstring)
    over `devices` of each process (default `eval_devices()`); returns every item's row,
    in item order, on every process."""
    _runs[0] += 1
    progress = Progress(len(costs), what, f"jaxsr_eval/{_runs[0]}", show=bar)
    try:
        rows, raised = _run_local(my_runs(costs, keys, devices), work, progress)
        progress.wait_for_all()
    finally:
        progress.close()
    rows = gather(rows, len(costs))
    raise_failures(rows, names, raised, what)
    return rows


class Progress:
    """A tqdm bar on process 0 (on a terminal) over the items of every process."""

    def __init__(self, total: int, desc: str, key: str, show: bool = True):
        self.total, self.key, self.done = total, key, 0
        self.lock = threading.Lock()
        self.client = None
        if jax.process_count() > 1:
            from jaxsr import distributed
            self.client = distributed.coordination_client()
        self.bar = None
        if show and jax.process_index() == 0 and sys.stderr.isatty() and total > 1:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="img", leave=False)

    def _count(self) -> int:
        if self.client is None:
            return self.done
        try:
            return int(self.client.key_value_try_get(self.key))
        except Exception:  # noqa: BLE001 - not set yet (no item finished anywhere)
            return 0

    def advance(self) -> None:
        with self.lock:
            self.done += 1
            if self.client is not None:
                self.client.key_value_increment(self.key, 1)
            if self.bar is not None:
                self.bar.n = min(self._count(), self.total)
                self.bar.refresh()

    def wait_for_all(self) -> None:
        """Process 0's bar goes on counting the others' items after its own are done."""
        if self.bar is None:
            return
        while self.client is not None and self._count() < self.total:
            self.bar.n = self._count()
            self.bar.refresh()
            time.sleep(0.2)
        self.bar.n = self.total     # every process's items are done: the bar ends full
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
