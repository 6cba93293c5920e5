"""How long the survivors of a 2-process run take to stop when a peer dies or hangs.

  python experiments/pod_fault_bound.py [--heartbeat 5 20] [--cases kill1 kill0 stop1]

Two processes of the tests' tiny EDSR over 127.0.0.1 (tests/test_distributed.launch); after
process 1 has logged step 6, one process is sent SIGKILL (kill1: process 1, kill0: process
0, the coordinator) or SIGSTOP (stop1: process 1's training child, a hang). Prints the
survivor's exit status, the seconds from the signal to its exit and its jaxsr message.
"""
import argparse
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from test_distributed import Processes, free_port, launch  # noqa: E402

CASES = {"kill1": (1, signal.SIGKILL), "kill0": (0, signal.SIGKILL),
         "stop1": (1, signal.SIGSTOP)}


def child_of(pid: int) -> int:
    """The training child under the supervisor `pid` (jaxsr.faults.supervise)."""
    return int(pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def wait_for(text, log, proc, deadline_s=300):
    deadline = time.monotonic() + deadline_s
    while text not in log.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.05)


def measure(case: str, heartbeat: int, tmp: pathlib.Path) -> None:
    victim, sig = CASES[case]
    port, logs = free_port(), [tmp / f"{case}_{heartbeat}_{i}.log" for i in range(2)]
    with Processes() as procs:
        started = [procs.add(launch(tmp / f"{case}_{heartbeat}", 10 ** 6, dist=(port, 2, i),
                                    log=logs[i], extra=["--config.data.num_shards=2",
                                                        f"--heartbeat_timeout={heartbeat}"]))
                   for i in range(2)]
        wait_for("step 6:", logs[1], started[1])
        os.kill(child_of(started[victim].pid) if sig == signal.SIGSTOP else started[victim].pid,
                sig)
        t0 = time.monotonic()
        code = started[1 - victim].wait(timeout=3 * heartbeat + 60)
        seconds = time.monotonic() - t0
    said = [x for x in logs[1 - victim].read_text().splitlines() if x.startswith("jaxsr: multi")]
    print(f"{case} heartbeat={heartbeat}s: survivor (process {1 - victim}) exit {code} "
          f"{seconds:.1f} s after {sig.name}\n  {said[0] if said else 'NO MESSAGE'}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeat", type=int, nargs="+", default=[5])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="pod_fault_bound_"))
    try:
        for heartbeat in args.heartbeat:
            for case in args.cases:
                measure(case, heartbeat, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
