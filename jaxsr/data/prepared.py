"""Prepared training data: HR sub-images in ArrayRecord shards (`config.data.source =
'array_record'`, folders written by `python -m jaxsr.tools.prepare`).

Decoding a 2K PNG costs ~70 ms of CPU per image (more in wall time on a loaded machine:
docs/performance.md, "Input pipeline"); a prepared record is raw uint8 pixels, so a
training sample costs one record read and a crop (0.5-0.9 ms of CPU). A folder holds
`manifest.json` (written last: its presence means the folder is complete) and
`shard-NNNNN.array_record` files.

Record layout (no pickle): a fixed little-endian header

    magic b"JXSR" | version u16 | height u32 | width u32 | channels u16 | top u32 |
    left u32 | name length u16

then the source image's name (UTF-8) and height * width * channels uint8 pixels, row-major.
`top, left` is the sub-image's origin in its source image.

Paired folders (`prepare --lr`, jaxsr.data.paired) hold version-2 records: after the name,
`<II` LR height, LR width, then the HR pixels, then the aligned LR sub-image's pixels (LR
origin = (top, left) / scale); the manifest says "scale" and "lr_record_shape".
"""
import bisect
import collections.abc
import ctypes
import json
import os
import struct
from typing import NamedTuple, Sequence

import numpy as np

from jaxsr import paths as path_layer
from jaxsr.data import images, paired

MANIFEST = "manifest.json"
FORMAT = "jaxsr.prepared/1"
_MAGIC = b"JXSR"
_VERSION = 1
_VERSION_PAIRED = 2
_HEADER = struct.Struct("<4sHIIHIIH")
_LR_HEADER = struct.Struct("<II")
RECORD_LAYOUT = ("little-endian header <4sHIIHIIH: magic b'JXSR', version, height, width, "
                 "channels, top, left, name length; then the name (UTF-8), then "
                 "height*width*channels uint8 pixels, row-major")


class PreparedDataError(ValueError):
    """A prepared folder that cannot be used; the message names the folder or file."""


class SubImage(NamedTuple):
    pixels: np.ndarray        # HxWxC uint8 (read-only view of the record)
    name: str                 # source image name
    top: int                  # origin in the source image
    left: int
    lr: np.ndarray | None = None   # paired records: the aligned LR sub-image


def encode_record(pixels: np.ndarray, name: str, top: int, left: int,
                  lr: np.ndarray | None = None) -> bytes:
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w, c = pixels.shape
    name_bytes = name.encode("utf-8")
    version = _VERSION if lr is None else _VERSION_PAIRED
    header = _HEADER.pack(_MAGIC, version, h, w, c, top, left, len(name_bytes))
    if lr is None:
        return header + name_bytes + pixels.tobytes()
    lr = np.ascontiguousarray(lr, dtype=np.uint8)
    if lr.ndim != 3 or lr.shape[2] != c:
        raise ValueError(f"LR sub-image of {name} has shape {lr.shape}, HR {pixels.shape}")
    return (header + name_bytes + _LR_HEADER.pack(*lr.shape[:2]) + pixels.tobytes()
            + lr.tobytes())


def decode_record(data: bytes, where: str) -> SubImage:
    """Record bytes -> SubImage without copying the pixels; errors name `where`."""
    if len(data) < _HEADER.size:
        raise images.ImageReadError(f"{where}: record of {len(data)} bytes is too short")
    magic, version, h, w, c, top, left, name_len = _HEADER.unpack_from(data)
    if magic != _MAGIC or version not in (_VERSION, _VERSION_PAIRED):
        raise images.ImageReadError(f"{where}: not a jaxsr record (magic {magic!r}, "
                                    f"version {version})")
    start = _HEADER.size + name_len
    name = bytes(data[_HEADER.size:start]).decode("utf-8")
    lh = lw = 0
    if version == _VERSION_PAIRED and len(data) >= start + _LR_HEADER.size:
        lh, lw = _LR_HEADER.unpack_from(data, start)
        start += _LR_HEADER.size
    if len(data) != start + (h * w + lh * lw) * c:
        raise images.ImageReadError(f"{where}: record has {len(data)} bytes, the header "
                                    f"says {start + (h * w + lh * lw) * c} ({h}x{w}x{c}"
                                    + (f" + LR {lh}x{lw}x{c})" if lh else ")"))
    pixels = np.frombuffer(data, np.uint8, count=h * w * c, offset=start).reshape(h, w, c)
    lr = None
    if version == _VERSION_PAIRED:
        lr = np.frombuffer(data, np.uint8, count=lh * lw * c,
                           offset=start + h * w * c).reshape(lh, lw, c)
    return SubImage(pixels, name, top, left, lr)


def read_manifest(folder: str) -> dict:
    """The manifest of a complete prepared folder, checked against the shards on disk.
    A gs:// folder is read in place (ArrayRecord reads gs:// itself)."""
    path = path_layer.join(folder, MANIFEST)
    if not path_layer.isdir(folder):
        raise PreparedDataError(f"prepared data folder does not exist: {folder}")
    if not path_layer.isfile(path):
        raise PreparedDataError(
            f"{folder} has no {MANIFEST}: not a prepared folder, or `python -m "
            "jaxsr.tools.prepare` did not finish there (rerun it to resume)")
    try:
        manifest = json.loads(path_layer.read_bytes(path))
    except (OSError, ValueError) as e:
        raise PreparedDataError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PreparedDataError(f"{path}: format {found!r} is not {FORMAT!r}")
    for shard in manifest.get("shards", ()):
        check_shard_file(folder, shard)
    return manifest


def check_shard_file(folder: str, shard: dict) -> None:
    """A shard named by a manifest exists with the size it was written with."""
    path = path_layer.join(folder, shard["file"])
    if not path_layer.isfile(path):
        raise PreparedDataError(f"shard {path} listed in {MANIFEST} is missing")
    size = path_layer.size(path)
    if size != shard["bytes"]:
        raise PreparedDataError(f"shard {path} has {size} bytes, {MANIFEST} says "
                                f"{shard['bytes']}: truncated or replaced, prepare again")


def keep_freed_buffers_in_heap() -> None:
    """Stops glibc from returning each freed record buffer to the OS.

    Every read allocates a fresh buffer of a record's size (691 KB at 480 px). Above
    glibc's mmap threshold (128 KB until it adapts) and trim threshold such buffers are
    mapped and unmapped per read, and the page faults of touching them again made a read
    cost 1.4 ms of CPU instead of 0.25 ms (docs/performance.md, "Input pipeline").
    Buffers up to 4 MiB now come from the heap, which keeps up to 32 MiB of free space.
    glibc only; the user's own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ win.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):            # not glibc (musl, macOS): nothing to do
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_trim_threshold, 32 << 20)
    mallopt(m_mmap_threshold, 4 << 20)


class PreparedSource(collections.abc.Sequence):
    """index -> HxWx3 uint8 sub-image over one or more prepared folders (concatenated).

    Picklable for grain's worker processes: the ArrayRecord files are opened lazily in
    each process and the open readers are not pickled.
    """

    def __init__(self, folders: Sequence[str]):
        if isinstance(folders, str):
            folders = (folders,)
        if not folders:
            raise PreparedDataError("config.data.prepared_dirs is empty: give the folders "
                                    "written by `python -m jaxsr.tools.prepare`")
        self.folders = tuple(folders)
        self.manifests = [read_manifest(d) for d in self.folders]
        self.paths = [path_layer.join(d, s["file"])
                      for d, m in zip(self.folders, self.manifests) for s in m["shards"]]
        counts = [s["records"] for m in self.manifests for s in m["shards"]]
        self._shard_ends = np.cumsum(counts).tolist()   # to name the shard of a record
        self._length = sum(m["total_records"] for m in self.manifests)
        if not self._length:
            raise PreparedDataError(f"prepared folders {self.folders} hold no records")
        self._records = None

    def __getstate__(self):
        return {**self.__dict__, "_records": None}

    def __len__(self) -> int:
        return self._length

    def min_side(self) -> int:
        """The smallest sub-image side over all folders (from the manifests)."""
        return min(min(m["record_shape"][:2]) for m in self.manifests)

    def _open(self):
        import grain                             # the training stack; not needed to prepare
        keep_freed_buffers_in_heap()             # once per process that reads records
        records = grain.sources.ArrayRecordDataSource(self.paths)
        if len(records) != self._length:
            raise PreparedDataError(f"prepared folders {self.folders}: the shards hold "
                                    f"{len(records)} records, the manifests say {self._length}")
        return records

    def record(self, index: int) -> SubImage:
        if not 0 <= index < self._length:
            raise IndexError(f"record {index} of {self._length}")
        if self._records is None:
            self._records = self._open()
        return decode_record(self._records[index], self._where(index))

    def _where(self, index: int) -> str:
        shard = bisect.bisect_right(self._shard_ends, index)
        first = self._shard_ends[shard - 1] if shard else 0
        return f"{self.paths[shard]} record {index - first}"

    def scale(self) -> int:
        """The LR scale of paired folders (their records carry LR), 0 for HR-only ones;
        folders of both kinds, or of different scales, cannot be mixed."""
        scales = {int(m.get("scale", 0) or 0) for m in self.manifests}
        if len(scales) > 1:
            raise PreparedDataError(f"prepared folders {self.folders} mix HR-only and "
                                    f"paired data or scales ({sorted(scales)}): a batch "
                                    "either carries LR or not")
        return scales.pop()

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        rec = self.record(index)
        if rec.lr is None:
            return rec.pixels
        return paired.Pair(rec.pixels, rec.lr)


def source_from_config(config) -> PreparedSource:
    """`config.data.prepared_dirs` -> PreparedSource, checked against the patch size."""
    source = PreparedSource(tuple(config.data.prepared_dirs))
    patch = config.train.patch_size
    scale = source.scale()
    if scale and scale != config.scale:
        raise PreparedDataError(f"prepared folders {source.folders} hold x{scale} LR/HR "
                                f"pairs, but config.scale={config.scale}")
    if source.min_side() < patch:
        raise PreparedDataError(
            f"config.train.patch_size={patch} is larger than the {source.min_side()} px "
            f"sub-images of {source.folders}: prepare them with a larger --crop")
    return source
