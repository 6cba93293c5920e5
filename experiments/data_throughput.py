"""Input pipeline throughput: training samples/s per host core, PNG folders vs prepared
ArrayRecord shards (docs/performance.md, "Input pipeline").

  python experiments/data_throughput.py                 # DIV2K subset, paper patch sizes
  python experiments/data_throughput.py --quick         # a smoke run (seconds)

Every row runs `jaxsr.data.pipeline.train_dataset` exactly as training does (random crop,
dihedral flips, batching; `--config.data.*` as given) on the batch and HR patch of the
paper configs (configs/nlsn.py, configs/dlsn.py at x2 and x4), with
* 'png': a folder of the 2K PNGs, each listed `--png_repeats` times (over 64 files, so the
  reader does not cache decoded images: every sample decodes one whole PNG, as with DIV2K);
* 'array_record': the same images cut by `jaxsr.tools.prepare` (480 crop, 240 step).
Each is measured with one reading thread (`num_threads=1, num_workers=0`) and with
`--workers` worker processes of one thread each. Reported: samples per wall second, and
samples per CPU second of this process and its workers (the per-core rate; unlike wall
time it holds on a machine shared with other jobs). Medians of `--repeats` runs; start-up
and the batches prefetched meanwhile are not timed. `--quick` (one shape, batch 4, one
run) only checks that everything runs.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import flags  # noqa: E402

from experiments import common  # noqa: E402
from jaxsr.data import images, pipeline  # noqa: E402
from jaxsr.tools import prepare  # noqa: E402

DEFAULT_HR = os.path.join(os.path.dirname(REPO), "shared", "data", "train",
                          "DIV2K_valid_HR_subset")
PAPER_CONFIGS = ("configs/nlsn.py", "configs/dlsn.py")


def paper_shapes(scales=(2, 4)) -> dict:
    """(batch, HR patch) -> the paper configs that train with it."""
    shapes = {}
    for spec in PAPER_CONFIGS:
        for s in scales:
            c = common.load_config(spec)
            c.scale = s
            key = (c.train.batch_size, c.train.patch_size)
            shapes.setdefault(key, []).append(f"{os.path.basename(spec)[:-3]} x{s}")
    return shapes


def repeated_png_folder(hr_dir: str, repeats: int, work: str) -> str:
    """A folder listing every image of hr_dir `repeats` times (symlinks)."""
    out = os.path.join(work, "png")
    os.makedirs(out, exist_ok=True)
    for path in images.list_images(hr_dir):
        name, ext = os.path.splitext(os.path.basename(path))
        for r in range(repeats):
            link = os.path.join(out, f"{name}_r{r}{ext}")
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(path), link)
    return out


def bench_config(source: str, folder: str, batch: int, patch: int, workers: int):
    c = common.load_config("configs/nlsn.py")
    c.train.batch_size, c.train.patch_size = batch, patch
    c.data.source, c.data.num_threads, c.data.num_workers = source, 1, workers
    c.data.train_lr_dirs = ()              # HR only: the paper config's LR files are not here
    if source == "png":
        c.data.source, c.data.train_dirs = "folders", (folder,)
    else:
        c.data.prepared_dirs = (folder,)
    return c


def cpu_seconds() -> float:
    """CPU time of this process and its live children (grain's workers), from /proc."""
    total = time.process_time()
    me, tick = str(os.getpid()), os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:                       # ppid; utime, stime follow at 11, 12
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def samples_per_second(config, batches: int, warmup: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) after `warmup` batches, which
    start the workers and drain the prefetch buffers filled meanwhile."""
    it = iter(pipeline.train_dataset(config))
    for _ in range(warmup):
        next(it)
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(batches):
        next(it)
    samples = batches * config.train.batch_size
    rates = samples / (time.perf_counter() - wall), samples / (cpu_seconds() - cpu)
    if hasattr(it, "close"):
        it.close()
    return rates


def measure(source, folder, shapes, workers, batches, repeats) -> list[dict]:
    rows = []
    for (batch, patch), names in shapes.items():
        for nw in sorted({0, workers}):
            config = bench_config(source, folder, batch, patch, nw)
            # grain prefetches 4 batches per reading process (ReadOptions in train_dataset)
            runs = [samples_per_second(config, batches, warmup=4 * max(nw, 1) + 1)
                    for _ in range(repeats)]
            wall = statistics.median(r[0] for r in runs)
            rows.append({"source": source, "configs": ", ".join(names), "batch": batch,
                         "patch": patch, "workers": nw, "samples_per_s": round(wall, 1),
                         "per_cpu_s": round(statistics.median(r[1] for r in runs), 1),
                         "runs_wall": [round(r[0], 1) for r in runs]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def prepare_timed(hr_dir: str, work: str, crop: int, step: int) -> tuple[str, dict]:
    out = os.path.join(work, "prepared")
    start = time.perf_counter()
    manifest = prepare.prepare([hr_dir], out, crop=crop, step=step, progress=False)
    seconds = time.perf_counter() - start
    return out, {"images": len(manifest["images"]), "records": manifest["total_records"],
                 "seconds": round(seconds, 2), "shard_bytes": sum(s["bytes"] for s in manifest["shards"])}


def report(rows, prep, machine) -> str:
    table = common.markdown_table(
        ["source", "configs", "batch x HR patch", "workers", "samples/s (wall)",
         "samples per CPU-s", "wall runs"],
        [[r["source"], r["configs"], f"{r['batch']} x {r['patch']}", r["workers"],
          r["samples_per_s"], r["per_cpu_s"], " ".join(map(str, r["runs_wall"]))]
         for r in rows])
    return f"{table}\n\nprepare: {prep}\nmachine: {machine}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hr", default=DEFAULT_HR, help="folder of HR PNGs")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, few batches")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--png_batches", type=int, default=4, help="timed batches, png rows")
    ap.add_argument("--record_batches", type=int, default=40, help="timed batches, records")
    ap.add_argument("--png_repeats", type=int, default=9, help="listings of each PNG")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--crop", type=int, default=480)
    ap.add_argument("--step", type=int, default=240)
    ap.add_argument("--patch", type=int, default=0, help="one HR patch instead of the papers'")
    ap.add_argument("--batch", type=int, default=16, help="with --patch")
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default="", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if not flags.FLAGS.is_parsed():               # grain's workers read absl flags
        flags.FLAGS(sys.argv[:1])
    if args.quick:
        args.repeats, args.png_batches, args.record_batches = 1, 1, 4
    shapes = {(args.batch, args.patch): ["custom"]} if args.patch else paper_shapes()
    if args.quick:
        (_, patch), names = next(iter(shapes.items()))
        shapes = {(4, patch): names}
    machine = common.machine_info()
    with tempfile.TemporaryDirectory(dir=args.work or None) as work:
        folder, prep = prepare_timed(args.hr, work, args.crop, args.step)
        rows = measure("array_record", folder, shapes, args.workers, args.record_batches,
                       args.repeats)
        png = repeated_png_folder(args.hr, args.png_repeats, work)
        rows += measure("png", png, shapes, args.workers, args.png_batches, args.repeats)
    print(report(rows, prep, machine))
    if args.out:
        common.write_json(args.out, {"rows": rows, "prepare": prep, "machine": machine,
                                     "argv": sys.argv[1:]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
