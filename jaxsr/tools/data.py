"""Get the standard SR datasets in the layout jaxsr reads, and check them file by file.

    python -m jaxsr.tools.data get benchmarks --out data     # data/benchmarks/<Set>/...
    python -m jaxsr.tools.data get div2k --out data          # data/DIV2K/DIV2K_train_HR, ...
    python -m jaxsr.tools.data get flickr2k --out data       # data/Flickr2K/Flickr2K_HR, ...
    python -m jaxsr.tools.data verify data                   # exit 1 on any mismatch

`get` downloads the published archives (ARCHIVES; sources in docs/data.md), or the same
file names under `--mirror BASE_URL`. Each archive is downloaded to `<out>/.partial/` under
a temporary name, its length checked against the server's Content-Length (and size and
sha256 where known), extracted into a temporary folder beside its destination and renamed
into place only when complete: an interrupted or damaged download never leaves a folder
that looks complete, and a rerun starts that archive again. A destination that exists is
left alone (delete it to fetch again). `verify` is jaxsr.tools.data_verify.
"""
import argparse
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from typing import NamedTuple

from jaxsr.tools import data_verify


class Archive(NamedTuple):
    url: str          # the published archive
    dest: str         # the folder it becomes, relative to --out
    strip: str        # the archive's folder whose content goes into dest
    size: int = 0     # bytes, where known (0: unknown, the Content-Length is checked)
    sha256: str = ""  # where known


class DataError(RuntimeError):
    """A download or extraction that failed; the message names the file and what to do."""


EDSR = "https://cv.snu.ac.kr/research/EDSR"
DIV2K = "https://data.vision.ee.ethz.ch/cvl/DIV2K"


def div2k_archives(splits, scales) -> list[Archive]:
    out = []
    for split in splits:
        out.append(Archive(f"{DIV2K}/DIV2K_{split}_HR.zip", f"DIV2K/DIV2K_{split}_HR",
                           f"DIV2K_{split}_HR/"))
        for s in scales:
            lr = f"DIV2K_{split}_LR_bicubic/X{s}"
            out.append(Archive(f"{DIV2K}/DIV2K_{split}_LR_bicubic_X{s}.zip", f"DIV2K/{lr}",
                               f"{lr}/"))
    return out


def archives(dataset: str, splits=("train", "valid"), scales=(2, 3, 4)) -> list[Archive]:
    if dataset == "benchmarks":       # Set5, Set14, B100, Urban100 (HR + LR_bicubic)
        return [Archive(f"{EDSR}/benchmark.tar", "benchmarks", "benchmark/")]
    if dataset == "div2k":
        return div2k_archives(splits, scales)
    if dataset == "flickr2k":         # Flickr2K_HR + Flickr2K_LR_bicubic/X2..X4
        return [Archive(f"{EDSR}/Flickr2K.tar", "Flickr2K", "Flickr2K/")]
    raise DataError(f"unknown dataset {dataset!r}: use benchmarks, div2k or flickr2k")


def with_mirror(archive: Archive, mirror: str) -> Archive:
    """The same file name under another base URL."""
    if not mirror:
        return archive
    return archive._replace(url=mirror.rstrip("/") + "/" + archive.url.rsplit("/", 1)[1])


def download(url: str, path: str, size: int = 0, sha256: str = "",
             progress=lambda done, total: None) -> None:
    """`url` -> `path`, via `path`.tmp renamed when its length (and size/sha256 where
    known) is right."""
    tmp = path + ".tmp"
    h = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            while block := r.read(1 << 20):
                f.write(block)
                h.update(block)
                done += len(block)
                progress(done, total)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        _remove(tmp)
        raise DataError(f"download of {url} failed after {done} bytes: {e}; nothing was "
                        "kept, run the command again (or use --mirror)") from None
    problems = []
    if total and done != total:
        problems.append(f"{done} bytes received, the server announced {total}")
    if size and done != size:
        problems.append(f"{done} bytes, expected {size}")
    if sha256 and h.hexdigest() != sha256:
        problems.append(f"sha256 {h.hexdigest()}, expected {sha256}")
    if problems:
        _remove(tmp)
        raise DataError(f"download of {url} is incomplete or wrong ({'; '.join(problems)}); "
                        "nothing was kept, run the command again")
    os.replace(tmp, path)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def _members(path: str):
    """(name, is_dir, open_fn) of every member of a zip or tar archive."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                yield info.filename, info.is_dir(), lambda i=info: z.open(i)
        return
    with tarfile.open(path) as t:            # any compression tarfile knows
        for info in t:
            if info.isdir() or info.isfile():
                yield info.name, info.isdir(), lambda i=info: t.extractfile(i)


def safe_relative(name: str, strip: str) -> str | None:
    """The member's path inside `strip`, or None when outside it; '..' and absolute paths
    are refused."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("/") or ".." in name.split("/"):
        raise DataError(f"archive member {name!r} points outside the archive")
    if not name.startswith(strip):
        return None
    return name[len(strip):].strip("/") or None


def extract(path: str, strip: str, dest: str) -> int:
    """Extracts the members under `strip` into a temporary folder beside `dest`, then
    renames it to `dest`. Returns the number of files. A damaged archive raises DataError
    and leaves no `dest`."""
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.extracting")
    _remove(tmp)
    os.makedirs(tmp)
    count = 0
    try:
        for name, is_dir, open_member in _members(path):
            rel = safe_relative(name, strip)
            if rel is None or is_dir:
                continue
            target = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open_member() as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        _remove(tmp)
        raise DataError(f"{path} is damaged or truncated ({type(e).__name__}: {e}); nothing "
                        f"was written to {dest}: delete {path} and run the command again") from None
    if not count:
        _remove(tmp)
        raise DataError(f"{path} has no files under {strip!r}: not the expected archive")
    os.replace(tmp, dest)
    return count


def get_one(archive: Archive, out: str, keep: bool, say=print) -> str:
    dest = os.path.join(out, archive.dest)
    if os.path.isdir(dest):
        say(f"{dest}: exists, left alone (delete it to fetch again)")
        return dest
    partial = os.path.join(out, ".partial")
    os.makedirs(partial, exist_ok=True)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    path = os.path.join(partial, archive.url.rsplit("/", 1)[1])
    if not os.path.isfile(path):
        say(f"downloading {archive.url}")
        download(archive.url, path, archive.size, archive.sha256, _progress_printer())
    try:
        n = extract(path, archive.strip, dest)
    except DataError:
        _remove(path)                       # a damaged download must not be reused
        raise
    if not keep:
        _remove(path)
    say(f"{dest}: {n} files")
    return dest


def _progress_printer():
    last = [-1]

    def progress(done, total):
        if total and sys.stderr.isatty():
            pct = 100 * done // total
            if pct != last[0]:
                last[0] = pct
                print(f"\r  {done / 2**20:.0f} of {total / 2**20:.0f} MiB", end="",
                      file=sys.stderr, flush=True)
    return progress


def cmd_get(args) -> int:
    try:
        todo = [with_mirror(a, args.mirror)
                for a in archives(args.dataset, args.splits, args.scales)]
        for a in todo:
            get_one(a, args.out, args.keep_archives)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    partial = os.path.join(args.out, ".partial")
    if os.path.isdir(partial) and not os.listdir(partial):
        os.rmdir(partial)
    print(f"done; check the files with: python -m jaxsr.tools.data verify {args.out}")
    return 0


def cmd_verify(args) -> int:
    if not os.path.isdir(args.dir):
        print(f"error: {args.dir} is not a folder", file=sys.stderr)
        return 1
    reports = data_verify.verify(args.dir)
    if not reports:
        print(f"error: no known dataset under {args.dir} (looked for "
              f"{', '.join(data_verify.DATASETS.values())})", file=sys.stderr)
        return 1
    for r in reports:
        print("\n".join(data_verify.format_report(r)))
    return 0 if all(r.passed for r in reports) else 1


def cmd_checksums(args) -> int:
    import json
    content = {"about": "Checksums of the reference benchmark and DIV2K images "
                        "(docs/data.md): python -m jaxsr.tools.data checksums ../shared/data",
               **data_verify.compute(args.root)}
    with open(args.output, "w") as f:
        json.dump(content, f, indent=1)
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jaxsr.tools.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("get", help="download and extract a dataset")
    g.add_argument("dataset", choices=("benchmarks", "div2k", "flickr2k"))
    g.add_argument("--out", required=True, help="data root, e.g. data")
    g.add_argument("--mirror", "--url", default="",
                   help="base URL holding the same archive file names")
    g.add_argument("--splits", nargs="+", default=["train", "valid"],
                   choices=("train", "valid"), help="div2k: which splits")
    g.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4], choices=(2, 3, 4),
                   help="div2k: which LR_bicubic scales")
    g.add_argument("--keep_archives", action="store_true",
                   help="keep the downloaded archives in <out>/.partial")
    g.set_defaults(run=cmd_get)
    v = sub.add_parser("verify", help="check a data root (or a set folder) file by file")
    v.add_argument("dir")
    v.set_defaults(run=cmd_verify)
    c = sub.add_parser("checksums", help="(maintainers) recompute the shipped checksums")
    c.add_argument("root", help="reference data root holding benchmarks/ and train/")
    c.add_argument("--output", default=data_verify.CHECKSUMS)
    c.set_defaults(run=cmd_checksums)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
