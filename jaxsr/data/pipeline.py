"""Grain input pipeline for training: HR image files -> random HR crops, batched, uint8.

Only decoding, cropping and dihedral augmentation run here (host, worker threads or
processes); LR synthesis (bicubic, blur, noise) runs on the accelerator inside the jitted
step (`jaxsr.data.degradations`). The iterator is deterministic for `config.seed` and its
state goes into every checkpoint, so a resumed run sees exactly the batches it would have.
"""
import functools
import logging
import os

import grain
import numpy as np
from PIL import Image

from jaxsr.data import images, sampling, shards

# The embedded demo data: photos shipped inside scikit-image's wheel (no download).
SKIMAGE_TRAIN = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg", "retina.jpg", "immunohistochemistry.png",
                 "ihc.png", "color.png", "brick.png", "grass.png", "gravel.png", "camera.png")
SKIMAGE_VAL = ("chelsea.png", "motorcycle_right.png", "page.png")


def skimage_paths(split: str) -> list[str]:
    import skimage.data
    root = os.path.dirname(skimage.data.__file__)
    names = SKIMAGE_TRAIN if split == "train" else SKIMAGE_VAL
    return [os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n))]


def usable_paths(paths, patch_size: int) -> list[str]:
    """Drops files that cannot be opened or are smaller than the patch, with a warning each."""
    keep = []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception as e:                      # noqa: BLE001 (any unreadable file)
            logging.warning("skipping unreadable training image %s: %s", p, e)
            continue
        if h < patch_size or w < patch_size:
            logging.warning("skipping training image %s: %dx%d is smaller than the %d px patch",
                            p, w, h, patch_size)
            continue
        keep.append(p)
    return keep


def train_paths(config) -> list[str]:
    if config.data.source == "skimage":
        paths = skimage_paths("train")
    elif config.data.source == "folders":
        paths = images.list_image_dirs(config.data.train_dirs, "config.data.train_dirs")
    else:
        raise ValueError(f"config.data.source={config.data.source!r}: use 'folders', "
                         "'skimage', 'array_record' (jaxsr.data.prepared) or 'tfds' "
                         "(jaxsr.data.tfds_source)")
    paths = usable_paths(paths, config.train.patch_size)
    if not paths:
        raise ValueError(f"no usable training images (source {config.data.source!r}, "
                         f"dirs {tuple(config.data.train_dirs)}, patch {config.train.patch_size})")
    return paths


class ImageReader:
    """item index -> HxWx3 uint8; files are decoded (and cached for small sets), a TFDS or
    prepared ArrayRecord source is indexed. Errors are ImageReadError naming the file or
    record.

    Picklable for grain's worker processes: the decode cache is built lazily and is not
    pickled, so each process keeps its own (a pickled lru_cache of a bound method fails).
    """

    def __init__(self, source, cache: bool):
        self.source, self.cache = source, cache
        self._cached_read = None

    def __getstate__(self):
        return {**self.__dict__, "_cached_read": None}

    def __len__(self) -> int:
        return len(self.source)

    def _read_uncached(self, index: int) -> np.ndarray:
        item = self.source[index]
        return images.read_rgb(item) if isinstance(item, str) else item

    def __call__(self, index: int) -> np.ndarray:
        if not self.cache:
            return self._read_uncached(index)
        if self._cached_read is None:
            self._cached_read = functools.lru_cache(maxsize=64)(self._read_uncached)
        return self._cached_read(index)


def dihedral(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """EDSR's augmentation: independent p=0.5 horizontal flip, vertical flip, transpose."""
    hflip, vflip, transpose = rng.random(3) < 0.5
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    if transpose:
        img = img.transpose(1, 0, 2)
    return np.ascontiguousarray(img)


class LoadCrop(grain.transforms.RandomMap):
    """index -> {'hr': uint8 patch}, or None when the image turns out to be unreadable."""

    def __init__(self, reader: ImageReader, patch: int, crop_mode: str, center_size: int,
                 augment: bool):
        self.reader, self.patch, self.crop_mode = reader, patch, crop_mode
        self.center_size, self.augment = center_size, augment

    def random_map(self, index, rng: np.random.Generator):
        try:
            img = self.reader(index)
        except images.ImageReadError as e:
            logging.warning("skipping training image: %s", e)
            return None
        if min(img.shape[:2]) < self.patch:
            return None
        img = sampling.crop_hr(img, rng, self.patch, self.crop_mode, self.center_size)
        if self.augment:
            img = dihedral(img, rng)
        return {"hr": img}


def _not_none(x) -> bool:
    return x is not None


def make_reader(config) -> "ImageReader":
    """The random-access source of training images named by config.data.source."""
    if config.data.source == "tfds":
        from jaxsr.data import tfds_source
        return ImageReader(tfds_source.source_from_config(config), cache=False)
    if config.data.source == "array_record":
        from jaxsr.data import prepared
        return ImageReader(prepared.source_from_config(config), cache=False)
    paths = train_paths(config)
    return ImageReader(paths, cache=len(paths) <= 64)


def shard_stream(reader, config, shard: int, num_shards: int) -> grain.MapDataset:
    """Endless shuffled crops of one data shard (jaxsr.data.shards), seeded per shard."""
    indices = shards.shard_indices(len(reader), shard, num_shards)
    return (grain.MapDataset.source(indices)
            .seed(config.seed + shard)
            .shuffle()
            .repeat(None)
            .random_map(LoadCrop(reader, config.train.patch_size, config.data.crop,
                                 config.data.center_size, config.data.augment)))


def train_dataset(config, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """The per-process training stream of {'hr': uint8 [B/process_count, P, P, 3]} batches:
    this process's data shards, each local batch one per-shard batch of each (shards.py)."""
    batch = config.train.batch_size
    own, per_shard, num_shards = shards.plan(config.data.num_shards, batch, process_index,
                                             process_count)
    reader = make_reader(config)
    streams = [shard_stream(reader, config, s, num_shards) for s in own]
    ds = streams[0] if len(streams) == 1 else shards.ShardBlocks(streams, per_shard)
    ds = ds.filter(_not_none).to_iter_dataset(grain.ReadOptions(
        num_threads=config.data.num_threads, prefetch_buffer_size=4 * batch))
    if config.data.num_workers > 0:
        # Workers hand over samples, batched here: worker w makes samples w, w+n, ... and
        # the round robin restores the threads' order, so batches equal num_workers=0's.
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
    return ds.batch(per_shard * len(own), drop_remainder=True)
