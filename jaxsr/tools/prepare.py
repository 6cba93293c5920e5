"""Cuts HR training images into sub-images stored as ArrayRecord shards.

    python -m jaxsr.tools.prepare --hr data/DIV2K/DIV2K_train_HR --out data/DIV2K_sub \\
        [--crop 480 --step 240 --thresh_size 0 --records_per_shard 1000 --workers 4]

then train with `--config.data.source=array_record --config.data.prepared_dirs="('data/DIV2K_sub',)"`.

Pairs (`--lr data/DIV2K/DIV2K_train_LR_bicubic/X2 --scale 2`, one --lr folder per --hr
folder, names matched as in training, jaxsr.data.paired): each record holds aligned HR
and LR sub-images, origins laid on the LR grid (crop, step, thresh_size / scale) and the
HR at scale x them, as BasicSR's separate HR and LR sub-image folders (docs/data.md).

The recipe is BasicSR's extract_subimages: along each axis of an image of side n the
origins are 0, step, 2 step, ... up to n - crop, plus n - crop itself when the pixels left
over after the last regular crop are more than thresh_size. Images are decoded with
training's reader (`read_rgb`: gray -> RGB, alpha dropped); unreadable images and images
smaller than the crop are reported by name, skipped and listed in the manifest.

Safe to interrupt: the plan (source listing checksum, settings, which images go into which
shard) is written first as plan.json; a shard holds whole images, is written under a
temporary name and renamed when complete, next to a small shard-NNNNN.json with its
per-image counts; manifest.json is written last. A rerun over
* a complete folder of the same sources and settings says so and exits 0, writing nothing;
* a partial folder of the same plan resumes: complete shards are kept, the rest written;
* a folder of other sources or settings (complete or not) is refused; `--overwrite`
  deletes this tool's files there first (nothing else).
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import sys

import numpy as np
from PIL import Image

import jaxsr
from jaxsr.data import images, paired, prepared

PLAN = "plan.json"
SHARD_SUFFIX = ".array_record"
_TMP = ".tmp"
# group_size:1 lets a random read decode one record instead of a whole chunk.
WRITER_OPTIONS = {"none": "group_size:1,uncompressed", "zstd": "group_size:1,zstd:3"}


class PrepareError(RuntimeError):
    """A request that cannot be done safely; the message says why and what to do."""


def crop_origins(size: int, crop: int, step: int, thresh_size: int) -> list[int]:
    """BasicSR's crop positions along one axis of `size` pixels (size >= crop)."""
    origins = list(range(0, size - crop + 1, step))
    if size - (origins[-1] + crop) > thresh_size:
        origins.append(size - crop)
    return origins


def subimage_origins(h: int, w: int, crop: int, step: int, thresh_size: int):
    """(top, left) of every sub-image, row by row, as BasicSR writes them."""
    return [(top, left) for top in crop_origins(h, crop, step, thresh_size)
            for left in crop_origins(w, crop, step, thresh_size)]


def listing_checksum(paths) -> str:
    """sha256 of the source listing (path, size, mtime): changes when any file does."""
    digest = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        digest.update(f"{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def image_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def survey(paths, crop: int, step: int, thresh_size: int, lr_paths=None, scale: int = 0):
    """Sizes from the file headers (no decoding) -> (usable images, skipped). With
    `lr_paths` (one per path) and `scale`, origins are counted on the LR grid and a
    wrongly sized pair is an error (paired.PairError naming both files)."""
    usable, skipped, seen = [], [], {}
    grid = (crop // scale, step // scale, thresh_size // scale) if lr_paths else \
        (crop, step, thresh_size)
    for k, p in enumerate(paths):
        name = image_name(p)
        if name in seen:
            raise PrepareError(f"two sources are named {name!r}: {seen[name]} and {p}; "
                               "sub-images are identified by name, rename one")
        seen[name] = p
        try:
            h, w = image_size(p)
            if lr_paths:
                lr_hw = image_size(lr_paths[k])
        except Exception as e:                  # noqa: BLE001 (any unreadable file)
            skipped.append({"path": p, "reason": f"unreadable: {e}"})
            continue
        item = {"name": name, "path": p, "height": h, "width": w}
        if lr_paths:
            paired.check_sizes((h, w), lr_hw, scale, p, lr_paths[k])
            item["lr_path"] = lr_paths[k]
            h, w = paired.usable_extent((h, w), lr_hw, scale)
        if h < grid[0] or w < grid[0]:
            skipped.append({"path": p, "reason": f"{w}x{h} is smaller than the {grid[0]} px "
                            + ("LR crop" if lr_paths else "crop")})
            continue
        item["records"] = len(subimage_origins(h, w, *grid))
        usable.append(item)
    return usable, skipped


def image_size(path: str):
    """(height, width) from the file header."""
    with Image.open(path) as im:
        w, h = im.size
    return h, w


def group_into_shards(usable, records_per_shard: int) -> list[list[dict]]:
    """Consecutive whole images per shard, closing a shard once it holds
    records_per_shard sub-images (so a shard never depends on another one's images)."""
    shards, current, count = [], [], 0
    for item in usable:
        current.append(item)
        count += item["records"]
        if count >= records_per_shard:
            shards.append(current)
            current, count = [], 0
    if current:
        shards.append(current)
    return shards


def list_sources(hr_dirs, lr_dirs, scale: int, template: str = ""):
    """(HR paths, their LR paths or None): one --lr folder per --hr folder, names matched
    as in training (jaxsr.data.paired.match)."""
    if not lr_dirs:
        return images.list_image_dirs(hr_dirs, "--hr"), None
    if len(lr_dirs) != len(hr_dirs):
        raise PrepareError(f"{len(lr_dirs)} --lr folder(s) for {len(hr_dirs)} --hr folder(s): "
                           "give one LR folder per HR folder, in the same order")
    pairs = [pair for h, l in zip(hr_dirs, lr_dirs)
             for pair in paired.match(images.list_image_dirs((h,), "--hr"), l, scale,
                                      f"--lr {l}", template)]
    return [h for h, _ in pairs], [l for _, l in pairs]


def make_plan(hr_dirs, crop, step, thresh_size, records_per_shard, compression,
              lr_dirs=(), scale: int = 0, template: str = "") -> dict:
    paths, lr_paths = list_sources(hr_dirs, lr_dirs, scale, template)
    usable, skipped = survey(paths, crop, step, thresh_size, lr_paths, scale)
    shards = group_into_shards(usable, records_per_shard)
    sources = {"dirs": [os.path.abspath(d) for d in hr_dirs], "files": len(paths),
               "sha256": listing_checksum(paths + (lr_paths or []))}
    settings = {"crop": crop, "step": step, "thresh_size": thresh_size,
                "records_per_shard": records_per_shard, "compression": compression}
    if lr_paths:                                  # absent for HR-only data, as before
        sources["lr_dirs"] = [os.path.abspath(d) for d in lr_dirs]
        settings["scale"] = scale
    return {
        "format": prepared.FORMAT,
        "sources": sources,
        "settings": settings,
        "skipped_unopenable": skipped,
        "shards": [{"file": f"shard-{i:05d}{SHARD_SUFFIX}", "images": group}
                   for i, group in enumerate(shards)],
    }


def write_json(path: str, obj) -> None:
    """Atomic: a reader sees the old file or the whole new one, never a part."""
    tmp = path + _TMP
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise PrepareError(f"cannot read {path}: {e}; delete it or use --overwrite") from None


def cut_pair(path, lr_path, name, crop, step, thresh_size, scale):
    """Aligned records of a pair: origins on the LR grid, HR at scale x those."""
    try:
        hr, lr = paired.read_pair(path, lr_path, scale)
    except images.ImageReadError as e:
        return None, f"unreadable: {e}"
    h, w = paired.usable_extent(hr.shape[:2], lr.shape[:2], scale)
    c = crop // scale
    if h < c or w < c:
        return None, f"{w}x{h} is smaller than the {c} px LR crop"
    return [prepared.encode_record(hr[scale * t:scale * t + crop, scale * l:scale * l + crop],
                                   name, scale * t, scale * l, lr[t:t + c, l:l + c])
            for t, l in subimage_origins(h, w, c, step // scale, thresh_size // scale)], None


def cut_image(task):
    """Worker: (path, name, crop, step, thresh_size, lr_path, scale) -> (records, None) or
    (None, reason); lr_path None: HR only."""
    path, name, crop, step, thresh_size, lr_path, scale = task
    if lr_path:
        return cut_pair(path, lr_path, name, crop, step, thresh_size, scale)
    try:
        img = images.read_rgb(path)
    except images.ImageReadError as e:
        return None, f"unreadable: {e}"
    h, w = img.shape[:2]
    if h < crop or w < crop:
        return None, f"{w}x{h} is smaller than the {crop} px crop"
    return [prepared.encode_record(img[t:t + crop, l:l + crop], name, t, l)
            for t, l in subimage_origins(h, w, crop, step, thresh_size)], None


def ordered_results(tasks, workers: int):
    """cut_image over tasks, in order; at most 2 * workers images in flight (memory)."""
    if workers <= 1:
        yield from map(cut_image, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        in_flight = []
        for task in tasks:
            in_flight.append(pool.apply_async(cut_image, (task,)))
            if len(in_flight) > 2 * workers:
                yield in_flight.pop(0).get()
        for result in in_flight:
            yield result.get()


def sidecar_path(out: str, shard: dict) -> str:
    return os.path.join(out, shard["file"][:-len(SHARD_SUFFIX)] + ".json")


def write_shard(out: str, shard: dict, results, options: str, bar) -> None:
    """Writes one shard under a temporary name; its sidecar, then the rename, mark it done."""
    from array_record.python.array_record_module import ArrayRecordWriter
    final = os.path.join(out, shard["file"])
    writer = ArrayRecordWriter(final + _TMP, options)
    written, skipped = [], []
    for item in shard["images"]:
        records, reason = next(results)
        if records is None:
            skipped.append({"path": item["path"], "reason": reason})
            bar.write(f"skipping {item['path']}: {reason}")
        else:
            for r in records:
                writer.write(r)
            written.append({**item, "records": len(records)})
        bar.update(1)
    writer.close()
    with open(final + _TMP, "rb+") as f:          # on disk before it is called complete
        os.fsync(f.fileno())
    write_json(sidecar_path(out, shard), {
        "file": shard["file"], "bytes": os.path.getsize(final + _TMP),
        "records": sum(i["records"] for i in written), "images": written, "skipped": skipped})
    os.replace(final + _TMP, final)


def completed_shard(out: str, shard: dict):
    """The sidecar of a shard finished by an earlier run, or None (then it is redone)."""
    final, side = os.path.join(out, shard["file"]), sidecar_path(out, shard)
    if not (os.path.isfile(final) and os.path.isfile(side)):
        return None
    info = read_json(side)
    planned = [i["name"] for i in shard["images"]]
    done = [i["name"] for i in info["images"]] + [image_name(s["path"]) for s in info["skipped"]]
    if info.get("bytes") != os.path.getsize(final) or sorted(done) != sorted(planned):
        return None
    return info


def build_manifest(plan: dict, sidecars) -> dict:
    crop = plan["settings"]["crop"]
    listed, skipped, shards, first = [], list(plan["skipped_unopenable"]), [], 0
    for info in sidecars:
        for item in info["images"]:
            listed.append({**item, "first_record": first})
            first += item["records"]
        skipped += info["skipped"]
        shards.append({"file": info["file"], "records": info["records"], "bytes": info["bytes"]})
    manifest = {"format": prepared.FORMAT, "jaxsr_version": jaxsr.__version__,
                "sources": plan["sources"], "settings": plan["settings"],
                "record_shape": [crop, crop, 3], "record_layout": prepared.RECORD_LAYOUT,
                "total_records": first, "images": listed, "skipped": skipped,
                "shards": shards}
    scale = plan["settings"].get("scale")
    if scale:
        manifest.update(scale=scale, lr_record_shape=[crop // scale, crop // scale, 3])
    return manifest


def own_files(out: str) -> list[str]:
    """The files this tool writes in `out` (what --overwrite may delete)."""
    if not os.path.isdir(out):
        return []
    return sorted(f for f in os.listdir(out)
                  if f in (prepared.MANIFEST, PLAN, prepared.MANIFEST + _TMP, PLAN + _TMP)
                  or (f.startswith("shard-") and f.endswith((SHARD_SUFFIX, SHARD_SUFFIX + _TMP,
                                                               ".json", ".json" + _TMP))))


def differences(found: dict, plan: dict) -> str:
    """What differs between an earlier plan/manifest and this request, in words."""
    what = []
    if found.get("sources", {}).get("sha256") != plan["sources"]["sha256"]:
        what.append("source listing (files, sizes or mtimes) of "
                    f"{found.get('sources', {}).get('dirs')}")
    if found.get("settings") != plan["settings"]:
        what.append(f"settings {found.get('settings')} (this run: {plan['settings']})")
    return " and ".join(what)


def check_existing(out: str, plan: dict, overwrite: bool):
    """'complete' (nothing to do), 'resume' or 'fresh'; refuses to replace other data."""
    manifest_path, plan_path = os.path.join(out, prepared.MANIFEST), os.path.join(out, PLAN)
    for path, kind in ((manifest_path, "complete prepared data"), (plan_path, "a partial prepare")):
        if not os.path.isfile(path):
            continue
        diff = differences(read_json(path), plan)
        if not diff:
            return "complete" if path == manifest_path else "resume"
        if not overwrite:
            raise PrepareError(f"{out} holds {kind} with another {diff}; refusing to replace "
                               "it: use another --out, or --overwrite to delete it first")
        return "fresh"
    if own_files(out) and not overwrite:
        raise PrepareError(f"{out} holds shard files but no {PLAN} or {prepared.MANIFEST}: "
                           "not made by this version of the tool; use --overwrite to delete them")
    return "fresh"


def prepare(hr_dirs, out: str, crop: int = 480, step: int = 240, thresh_size: int = 0,
            records_per_shard: int = 1000, workers: int = 1, compression: str = "none",
            overwrite: bool = False, progress: bool = True, lr_dirs=(),
            scale: int = 0, lr_name_template: str = "") -> dict:
    """Writes (or resumes, or confirms) the prepared folder `out`; returns its manifest.
    `lr_dirs` (one per HR folder) and `scale`: paired records (module docstring)."""
    if min(crop, step, records_per_shard, workers) < 1 or thresh_size < 0:
        raise PrepareError("--crop, --step, --records_per_shard and --workers must be >= 1 "
                           "and --thresh_size >= 0")
    if lr_dirs and (scale < 1 or crop % scale or step % scale):
        raise PrepareError(f"--lr needs --scale >= 1 dividing --crop and --step (got scale "
                           f"{scale}, crop {crop}, step {step})")
    if compression not in WRITER_OPTIONS:
        raise PrepareError(f"--compression={compression!r}: use one of {sorted(WRITER_OPTIONS)}")
    plan = make_plan(hr_dirs, crop, step, thresh_size, records_per_shard, compression,
                     lr_dirs, scale if lr_dirs else 0, lr_name_template)
    if not plan["shards"]:
        raise PrepareError(f"no usable images in {list(hr_dirs)}: " + "; ".join(
            f"{s['path']}: {s['reason']}" for s in plan["skipped_unopenable"]))
    state = check_existing(out, plan, overwrite)
    if state == "complete":
        try:
            manifest = prepared.read_manifest(out)
        except prepared.PreparedDataError as e:
            raise PrepareError(f"{e}; use --overwrite to prepare {out} again") from None
        print(f"{out} is already complete for these sources and settings "
              f"({manifest['total_records']} sub-images); nothing to do")
        return manifest
    if state == "fresh":
        for f in own_files(out):
            os.remove(os.path.join(out, f))
        os.makedirs(out, exist_ok=True)
        write_json(os.path.join(out, PLAN), plan)
    write_pending(out, plan, workers, progress)
    sidecars = [completed_shard(out, s) for s in plan["shards"]]
    if None in sidecars:
        raise PrepareError(f"shard {plan['shards'][sidecars.index(None)]['file']} in {out} "
                           "did not verify after writing; rerun to write it again")
    manifest = build_manifest(plan, sidecars)
    write_json(os.path.join(out, prepared.MANIFEST), manifest)
    for shard in plan["shards"]:                 # the manifest now holds what these held
        os.remove(sidecar_path(out, shard))
    os.remove(os.path.join(out, PLAN))
    return manifest


def write_pending(out: str, plan: dict, workers: int, progress: bool) -> None:
    from tqdm import tqdm
    pending = [s for s in plan["shards"] if completed_shard(out, s) is None]
    done_images = sum(len(s["images"]) for s in plan["shards"]) - sum(
        len(s["images"]) for s in pending)
    if done_images:
        print(f"resuming {out}: {len(plan['shards']) - len(pending)} of "
              f"{len(plan['shards'])} shards are complete")
    settings = plan["settings"]
    tasks = [(i["path"], i["name"], settings["crop"], settings["step"], settings["thresh_size"],
              i.get("lr_path"), settings.get("scale", 0))
             for s in pending for i in s["images"]]
    results = ordered_results(tasks, workers)
    with tqdm(total=done_images + len(tasks), initial=done_images, unit="img",
              desc="prepare", disable=not progress) as bar:
        for shard in pending:
            write_shard(out, shard, results, WRITER_OPTIONS[settings["compression"]], bar)
    results.close()


def report(manifest: dict, out: str) -> None:
    print(f"{out}: {manifest['total_records']} sub-images of {len(manifest['images'])} "
          f"images in {len(manifest['shards'])} shards")
    for s in manifest["skipped"]:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxsr.tools.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hr", nargs="+", required=True, help="HR image folders")
    ap.add_argument("--lr", nargs="+", default=(),
                    help="LR folders, one per --hr folder: store aligned LR+HR sub-images")
    ap.add_argument("--scale", type=int, default=0, help="the LR scale of --lr (2, 3, 4)")
    ap.add_argument("--lr_name_template", default="",
                    help="LR name from the HR stem, e.g. '{}x{scale}' (default: both layouts)")
    ap.add_argument("--out", required=True, help="folder for the shards and manifest.json")
    ap.add_argument("--crop", type=int, default=480, help="sub-image side (BasicSR: 480)")
    ap.add_argument("--step", type=int, default=240, help="stride between sub-images")
    ap.add_argument("--thresh_size", type=int, default=0,
                    help="add a last row/column at side - crop when more pixels are left")
    ap.add_argument("--records_per_shard", type=int, default=1000,
                    help="a shard is closed at the first image boundary after this many")
    ap.add_argument("--workers", type=int, default=1, help="decoding processes")
    ap.add_argument("--compression", default="none", choices=sorted(WRITER_OPTIONS),
                    help="none: fastest to read (default); zstd: smaller")
    ap.add_argument("--overwrite", action="store_true",
                    help="delete this tool's files in --out when they are of other data")
    ap.add_argument("--no_progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        manifest = prepare(args.hr, args.out, args.crop, args.step, args.thresh_size,
                           args.records_per_shard, args.workers, args.compression,
                           args.overwrite, progress=not args.no_progress,
                           lr_dirs=args.lr, scale=args.scale,
                           lr_name_template=args.lr_name_template)
    except (PrepareError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(manifest, args.out)
    return 0 if manifest["total_records"] else 1


if __name__ == "__main__":
    sys.exit(main())
