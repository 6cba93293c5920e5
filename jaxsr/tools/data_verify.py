"""File-by-file check of benchmark and DIV2K folders against the checksums jaxsr ships.

`data_checksums.json` (beside this file) was computed from the reference copies described
in docs/data.md (`python -m jaxsr.tools.data checksums ../shared/data`). Each file has its
byte count and sha256, and the sha256 of its decoded pixels (PIL mode, size, raw bytes), so
a copy saved again with other PNG metadata still counts as the same image; a file whose
pixels differ is named, with its size when that differs too (a modcropped or uncropped
copy). B100 also accepts the uncropped 481x321 BSD originals named by BSD id (the sha256
of those files is known; evaluation modcrops them to the same pixels at x2/x3/x4), and
DIV2K's images are recognised by their pixels whatever their names.
"""
import hashlib
import json
import os
from typing import NamedTuple

from PIL import Image

CHECKSUMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_checksums.json")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Where each checked dataset sits under the data root that `get` writes; verify also
# accepts the dataset's own folder or its parent (benchmarks/) as DIR.
DATASETS = {"Set5": "benchmarks/Set5", "Set14": "benchmarks/Set14", "B100": "benchmarks/B100",
            "Urban100": "benchmarks/Urban100", "DIV2K": "DIV2K/DIV2K_valid_HR"}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pixel_digest(path: str) -> tuple[str, str]:
    """(sha256 of mode, size and raw pixels, 'WxH') of a decoded image."""
    with Image.open(path) as im:
        im.load()
        header = f"{im.mode} {im.size[0]}x{im.size[1]}\n".encode()
        return hashlib.sha256(header + im.tobytes()).hexdigest(), f"{im.size[0]}x{im.size[1]}"


def list_image_files(folder: str) -> list[str]:
    """Image files under `folder`, as sorted '/'-separated paths relative to it."""
    out = []
    for base, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.lower().endswith(IMAGE_EXTS):
                out.append(os.path.relpath(os.path.join(base, name), folder).replace(os.sep, "/"))
    return sorted(out)


def entry(path: str) -> dict:
    digest, size = pixel_digest(path)
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(path), "pixels": digest,
            "size": size}


def compute(data_root: str) -> dict:
    """The checksum file's content from a reference data root (benchmarks/, train/)."""
    out = {"datasets": {}}
    for name, rel in DATASETS.items():
        folder = os.path.join(data_root, rel)
        if name == "DIV2K":       # the reference holds 8 DIV2K validation images, renamed
            folder = os.path.join(data_root, "train", "DIV2K_valid_HR_subset")
        files = {f: entry(os.path.join(folder, f)) for f in list_image_files(folder)}
        if not files:
            raise FileNotFoundError(f"{folder}: no images to compute checksums from")
        out["datasets"][name] = {"files": files}
    out["datasets"]["B100"]["originals"] = _b100_originals(os.path.join(data_root, DATASETS["B100"]))
    return out


def _b100_originals(b100: str) -> dict:
    """{'<bsd id>.png': {'bytes', 'sha256', 'of'}} from B100/names.tsv."""
    originals = {}
    with open(os.path.join(b100, "names.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            originals[f"HR/{row['bsd_id']}.png"] = {
                "bytes": int(row["original_png_bytes"]),
                "sha256": row["original_png_sha256_from_LFS_pointer(parcone/dataset)"],
                "of": row["file"]}
    return originals


class Report(NamedTuple):
    dataset: str
    folder: str
    ok: list
    notes: list          # matches worth saying (same pixels, other bytes; an original)
    differ: list         # (file, why)
    missing: list
    extra: list

    @property
    def passed(self) -> bool:
        return not (self.differ or self.missing or self.extra)


def find_dataset(root: str, name: str) -> str | None:
    """The folder of dataset `name` given a data root, a benchmarks/ folder or the
    dataset's own folder."""
    rel = DATASETS[name]
    for candidate in (os.path.join(root, rel), os.path.join(root, os.path.basename(rel))):
        if os.path.isdir(candidate):
            return candidate
    if os.path.basename(os.path.normpath(root)) == os.path.basename(rel):
        return root
    return None


def _check_file(path: str, want: dict) -> str:
    """'' when `path` is the expected image (same bytes, or same pixels), else why not."""
    if os.path.getsize(path) == want["bytes"] and file_sha256(path) == want["sha256"]:
        return ""
    try:
        digest, size = pixel_digest(path)
    except OSError as e:
        return f"unreadable ({e})"
    if digest == want["pixels"]:
        return "same pixels"
    if size != want["size"]:
        return f"{size}, expected {want['size']} (a differently cropped or resized copy)"
    return f"same size ({size}), other pixels (another variant of the image)"


def check_named(name: str, folder: str, known: dict) -> Report:
    """Sets whose files have fixed names (Set5, Set14, B100, Urban100)."""
    files, originals = known["files"], known.get("originals", {})
    present = set(list_image_files(folder))
    ok, notes, differ, extra = [], [], [], []
    for rel in sorted(present):
        if rel in files:
            why = _check_file(os.path.join(folder, rel), files[rel])
            if why in ("", "same pixels"):
                ok.append(rel)
                if why:
                    notes.append((rel, "same pixels, other file bytes (re-saved)"))
            else:
                differ.append((rel, why))
        elif rel in originals:
            orig = originals[rel]
            if file_sha256(os.path.join(folder, rel)) == orig["sha256"]:
                ok.append(rel)
                notes.append((rel, f"the uncropped BSD original of {orig['of']} (modcrop "
                                   "gives the same pixels at x2/x3/x4)"))
            else:
                differ.append((rel, f"not the known BSD original of {orig['of']}"))
        else:
            extra.append(rel)
    covered = {originals[r]["of"] for r in present if r in originals}   # named differ if wrong
    missing = [f for f in sorted(files) if f not in present
               and os.path.basename(f) not in covered]
    return Report(name, folder, ok, notes, differ, missing, extra)


def check_by_content(name: str, folder: str, known: dict) -> Report:
    """DIV2K: the reference images are found by their pixels, whatever their names; other
    images there are not checked (the reference holds only a few)."""
    want = {v["pixels"]: k for k, v in known["files"].items()}
    ok, notes = [], []
    for rel in list_image_files(folder):
        digest, _ = pixel_digest(os.path.join(folder, rel))
        if digest in want:
            ok.append(rel)
            notes.append((rel, f"matches reference image {want.pop(digest)}"))
    missing = [f"{ref} (not found among {len(list_image_files(folder))} images by pixels)"
               for ref in sorted(want.values())]
    return Report(name, folder, ok, notes, [], missing, [])


def verify(root: str, checksums: str = CHECKSUMS) -> list[Report]:
    with open(checksums) as f:
        known = json.load(f)["datasets"]
    reports = []
    for name in DATASETS:
        folder = find_dataset(root, name)
        if folder is None:
            continue
        check = check_by_content if name == "DIV2K" else check_named
        reports.append(check(name, folder, known[name]))
    return reports


def format_report(r: Report) -> list[str]:
    status = "ok" if r.passed else "MISMATCH"
    lines = [f"{r.dataset} ({r.folder}): {status}: {len(r.ok)} file(s) match, "
             f"{len(r.differ)} differ, {len(r.missing)} missing, {len(r.extra)} extra"]
    lines += [f"  differs: {f}: {why}" for f, why in r.differ]
    lines += [f"  missing: {f}" for f in r.missing]
    lines += [f"  extra:   {f}" for f in r.extra]
    lines += [f"  note:    {f}: {why}" for f, why in r.notes]
    return lines
