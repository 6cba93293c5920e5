"""Grain input pipeline for training: HR image files -> random HR crops, batched, uint8.

Only decoding, cropping and dihedral augmentation run here (host, worker threads or
processes); LR synthesis (bicubic, blur, noise) runs on the accelerator inside the jitted
step (`jaxsr.data.degradations`). Paired data (`config.data.train_lr_dirs`, or a paired
prepared folder; jaxsr.data.paired) gives {'hr', 'lr'} batches of aligned crops instead,
and the step uses that LR. The iterator is deterministic for `config.seed` and its
state goes into every checkpoint, so a resumed run sees exactly the batches it would have.

`config.data.train_dirs` entries are folders or (folder, weight) pairs. The weight is
BasicSR's dataset_enlarge_ratio: each image of that set is drawn `weight` times as often as
one of a weight-1 set, so set i makes up w_i n_i / sum_j w_j n_j of the samples. Each data
shard then mixes one shuffled stream per set (grain's MapDataset.mix, deterministic and
index-based, so the iterator state stays exact); with every weight 1 the stream is the
single shuffled list it always was.
"""
import functools
import logging
import os

import grain
import numpy as np
from PIL import Image

from jaxsr.data import images, paired, sampling, shards

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
            with Image.open(images.image_file(p)) as im:     # gs:// too
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


def parse_train_dirs(train_dirs) -> list[tuple[str, float]]:
    """config.data.train_dirs -> [(folder, weight)]; a bad entry fails naming it."""
    if isinstance(train_dirs, str):
        train_dirs = (train_dirs,)
    out = []
    for i, entry in enumerate(train_dirs):
        where = f"config.data.train_dirs[{i}]={entry!r}"
        if isinstance(entry, str):
            folder, weight = entry, 1.0
        elif (isinstance(entry, (tuple, list)) and len(entry) == 2
              and isinstance(entry[0], str) and isinstance(entry[1], (int, float))
              and not isinstance(entry[1], bool)):
            folder, weight = entry[0], float(entry[1])
        else:
            raise ValueError(f"{where}: give a folder or a (folder, weight) pair")
        if not weight > 0 or not np.isfinite(weight):
            raise ValueError(f"{where}: the weight must be a positive number (how often each "
                             "image is drawn relative to a weight-1 set)")
        out.append((folder, weight))
    return out


def train_sets(config) -> list[tuple[list, float]]:
    """[(usable image paths, weight)] per training set: skimage is one set, folders one
    per config.data.train_dirs entry. With config.data.train_lr_dirs the items are
    (HR path, LR path) pairs (jaxsr.data.paired)."""
    if config.data.source == "skimage":
        sets = [(skimage_paths("train"), 1.0, "config.data.source='skimage'")]
    elif config.data.source == "folders":
        dirs = parse_train_dirs(config.data.train_dirs)
        if not dirs:
            images.list_image_dirs((), "config.data.train_dirs")     # the 'is empty' error
        sets = [(images.list_image_dirs((folder,), f"config.data.train_dirs[{i}]"), weight,
                 f"config.data.train_dirs[{i}]={folder!r}")
                for i, (folder, weight) in enumerate(dirs)]
        lr_dirs = paired.lr_dirs(config, len(dirs))
        if lr_dirs:
            return _paired_sets(sets, lr_dirs, config)
    else:
        raise ValueError(f"config.data.source={config.data.source!r}: use 'folders', "
                         "'skimage', 'array_record' (jaxsr.data.prepared) or 'tfds' "
                         "(jaxsr.data.tfds_source)")
    out = []
    for paths, weight, where in sets:
        paths = usable_paths(paths, config.train.patch_size)
        if not paths and len(sets) > 1:
            raise ValueError(f"{where}: no usable training images (all unreadable or smaller "
                             f"than the {config.train.patch_size} px patch)")
        out.append((paths, weight))
    return out


def _paired_sets(sets, lr_dirs, config) -> list[tuple[list, float]]:
    """[(usable (HR, LR) path pairs, weight)] per set: names matched, sizes checked."""
    out = []
    for i, ((paths, weight, where), lr_dir) in enumerate(zip(sets, lr_dirs)):
        pairs = paired.match(paths, lr_dir, config.scale, f"config.data.train_lr_dirs[{i}]",
                             config.data.get("lr_name_template", ""))
        pairs = paired.usable_pairs(pairs, config.train.patch_size, config.scale)
        if not pairs and len(sets) > 1:
            raise ValueError(f"{where}: no usable training pairs (unreadable or smaller "
                             f"than the {config.train.patch_size} px patch)")
        out.append((pairs, weight))
    return out


def train_paths(config) -> list:
    paths = [p for set_paths, _ in train_sets(config) for p in set_paths]
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

    def __init__(self, source, cache: bool, sets=None, scale: int = 1):
        self.source, self.cache, self.scale = source, cache, scale
        # [(number of items, weight)] of the consecutive training sets in `source`.
        self.sets = list(sets) if sets else [(len(source), 1.0)]
        self._cached_read = None

    def __getstate__(self):
        return {**self.__dict__, "_cached_read": None}

    def __len__(self) -> int:
        return len(self.source)

    def _read_uncached(self, index: int) -> np.ndarray:
        item = self.source[index]
        if isinstance(item, str):
            return images.read_rgb(item)
        if isinstance(item, tuple) and isinstance(item[0], str):   # (HR path, LR path)
            return paired.read_pair(*item, self.scale)
        return item

    def __call__(self, index: int) -> np.ndarray:
        if not self.cache:
            return self._read_uncached(index)
        if self._cached_read is None:
            self._cached_read = functools.lru_cache(maxsize=64)(self._read_uncached)
        return self._cached_read(index)


def dihedral(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """EDSR's augmentation: independent p=0.5 horizontal flip, vertical flip, transpose."""
    return sampling.apply_dihedral(img, sampling.dihedral_flags(rng))


class LoadCrop(grain.transforms.RandomMap):
    """index -> {'hr': uint8 patch} (or {'hr', 'lr'} for a pair), or None when the image
    turns out to be unreadable."""

    def __init__(self, reader: ImageReader, patch: int, crop_mode: str, center_size: int,
                 augment: bool):
        self.reader, self.patch, self.crop_mode = reader, patch, crop_mode
        self.center_size, self.augment = center_size, augment

    def crop_pair(self, pair: paired.Pair, rng: np.random.Generator):
        """EDSR get_patch + augment: aligned crops, one dihedral draw for both."""
        scale = self.reader.scale
        if min(paired.usable_extent(pair.hr.shape[:2], pair.lr.shape[:2], scale)) < \
                self.patch // scale:
            return None
        hr, lr = sampling.crop_pair(pair.hr, pair.lr, rng, self.patch, scale, self.crop_mode,
                                    self.center_size)
        if self.augment:
            flags = sampling.dihedral_flags(rng)
            hr, lr = sampling.apply_dihedral(hr, flags), sampling.apply_dihedral(lr, flags)
        return {"hr": np.ascontiguousarray(hr), "lr": np.ascontiguousarray(lr)}

    def random_map(self, index, rng: np.random.Generator):
        try:
            img = self.reader(index)
        except images.ImageReadError as e:
            logging.warning("skipping training image: %s", e)
            return None
        if isinstance(img, paired.Pair):
            return self.crop_pair(img, rng)
        if min(img.shape[:2]) < self.patch:
            return None
        img = sampling.crop_hr(img, rng, self.patch, self.crop_mode, self.center_size)
        if self.augment:
            img = dihedral(img, rng)
        return {"hr": img}


def _not_none(x) -> bool:
    return x is not None


def _lr_dirs_unused(config, source_says: str) -> ValueError:
    """The error for config.data.train_lr_dirs set with a source that carries no LR: the
    run would silently train on synthesised LR instead of the files it names."""
    return ValueError(
        f"config.data.train_lr_dirs={tuple(config.data.train_lr_dirs)!r} is set, but "
        f"config.data.source={config.data.source!r} {source_says}, so those LR files would "
        "be ignored. Either prepare paired shards (`python -m jaxsr.tools.prepare --hr HR "
        f"--lr LR --scale {config.scale} --out PREP`, then config.data.source='array_record' "
        "and config.data.prepared_dirs=('PREP',)), or set config.data.train_lr_dirs=() to "
        f"synthesise the LR on the device (config.degradation.name="
        f"{config.degradation.name!r})")


def lr_origin(config, paired_data: bool) -> str:
    """One line saying where the training LR comes from (logged once per run)."""
    if not paired_data:
        return (f"training LR: synthesised on the device from each HR crop "
                f"(config.degradation.name={config.degradation.name!r}, x{config.scale})")
    if config.data.source == "array_record":
        return (f"training LR: read from the paired prepared shards "
                f"{tuple(config.data.prepared_dirs)} (x{config.scale}, made by prepare --lr)")
    return (f"training LR: read from the files in config.data.train_lr_dirs="
            f"{tuple(config.data.train_lr_dirs)} (x{config.scale})")


def make_reader(config) -> "ImageReader":
    """The random-access source of training images named by config.data.source."""
    lr_dirs_set = bool(config.data.get("train_lr_dirs", ()))
    if config.data.source == "tfds":
        from jaxsr.data import tfds_source
        if lr_dirs_set:
            raise _lr_dirs_unused(config, "reads HR images only")
        reader = ImageReader(tfds_source.source_from_config(config), cache=False)
        paired_data = False
    elif config.data.source == "array_record":
        from jaxsr.data import prepared
        source = prepared.source_from_config(config)
        paired_data = bool(source.scale())
        if lr_dirs_set and not paired_data:
            raise _lr_dirs_unused(config, f"with config.data.prepared_dirs="
                                  f"{tuple(config.data.prepared_dirs)!r} holds HR-only "
                                  "sub-images (prepared without --lr)")
        reader = ImageReader(source, cache=False, scale=config.scale)
    else:
        sets = train_sets(config)
        paths = train_paths(config)
        reader = ImageReader(paths, cache=len(paths) <= 64,
                             sets=[(len(p), w) for p, w in sets if p], scale=config.scale)
        paired_data = bool(paths) and isinstance(paths[0], tuple)
        logging.info("training images: %d from config.data.source=%r", len(paths),
                     config.data.source)
    logging.info(lr_origin(config, paired_data))
    return reader


def shard_index_stream(sets, seed: int, shard: int, num_shards: int) -> grain.MapDataset:
    """Endless reader indices of one data shard (jaxsr.data.shards), seeded per shard.

    `sets`: [(items, weight)] of the reader's consecutive sets. Equal weights: one shuffled
    list of the shard's items. Otherwise each set is sharded and shuffled on its own and
    the streams are mixed in proportion weight x (the set's items in the shard)."""
    if len({w for _, w in sets}) <= 1:
        indices = shards.shard_indices(sum(n for n, _ in sets), shard, num_shards)
        return grain.MapDataset.source(indices).seed(seed + shard).shuffle().repeat(None)
    streams, proportions, offset = [], [], 0
    for i, (n, weight) in enumerate(sets):
        if n < num_shards:
            raise ValueError(f"config.data.train_dirs[{i}]: its {n} usable image(s) cannot "
                             f"fill the {num_shards} data shards (each shard mixes every set)")
        local = shards.shard_indices(n, shard, num_shards)
        streams.append(grain.MapDataset.source([offset + k for k in local])
                       .seed(seed + shard + num_shards * i).shuffle().repeat(None))
        proportions.append(weight * len(local))
        offset += n
    return grain.MapDataset.mix(streams, proportions)


def shard_stream(reader, config, shard: int, num_shards: int) -> grain.MapDataset:
    """Endless shuffled crops of one data shard (jaxsr.data.shards), seeded per shard."""
    return (shard_index_stream(reader.sets, config.seed, shard, num_shards)
            .random_map(LoadCrop(reader, config.train.patch_size, config.data.crop,
                                 config.data.center_size, config.data.augment)))


def train_dataset(config, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """The per-process training stream of {'hr': uint8 [B/process_count, P, P, 3]} batches
    (paired data: and 'lr': uint8 [B/process_count, P/s, P/s, 3]):
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
