"""TFDS as a training-data source (`config.data.source = 'tfds'`).

For users whose DIV2K/DF2K already sit in a TFDS data_dir (typical on cloud TPUs):
`tfds.data_source(name, split=..., data_dir=...)` gives random access to a dataset that was
prepared in ArrayRecord (or Parquet) format, without TensorFlow. `TfdsHRSource` wraps it
as a Sequence of HR uint8 arrays, so it drops into the same Grain pipeline as a list of
files (`grain.MapDataset.source(src)`, then cropping and augmentation).

tensorflow-datasets is an optional extra (`pip install tensorflow-datasets`) and is
imported only here, lazily. Preparing (downloading/building) a dataset needs TensorFlow,
which jaxsr does not require: prepare it elsewhere with `tfds build --file_format=array_record`.
A TFRecord-only dataset cannot be read this way (tfds raises NotImplementedError).
"""
import collections.abc
import io

import numpy as np

from jaxsr.data import images


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "config.data.source='tfds' needs tensorflow-datasets (an optional extra, not in "
            "requirements.txt): pip install tensorflow-datasets. It reads datasets already "
            f"prepared as ArrayRecord without TensorFlow. ({e})") from None
    return tfds


def _to_uint8(value, where: str) -> np.ndarray:
    """A decoded image array or encoded PNG/JPEG bytes -> HxWx3 uint8."""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        from PIL import Image
        try:
            with Image.open(io.BytesIO(bytes(value))) as im:
                im.load()
                value = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)
        except Exception as e:                   # noqa: BLE001 (PIL raises several types)
            raise images.ImageReadError(f"cannot decode image bytes of {where}: {e}") from None
    try:
        return images.to_rgb_uint8(np.asarray(value))
    except images.ImageReadError as e:
        raise images.ImageReadError(f"{where}: {e}") from None


class TfdsHRSource(collections.abc.Sequence):
    """Random access to HR images of a tfds data source (anything with __len__ and
    __getitem__ returning a dict of features)."""

    def __init__(self, data_source, image_key: str = "hr", name: str = "tfds"):
        self.source, self.image_key, self.name = data_source, image_key, name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        example = self.source[i]
        where = f"{self.name}[{i}]"
        if not isinstance(example, collections.abc.Mapping):
            return _to_uint8(example, where)
        if self.image_key not in example:
            raise KeyError(f"{where} has no feature {self.image_key!r} "
                           f"(config.data.tfds_image_key); features: {sorted(example)}")
        return _to_uint8(example[self.image_key], where)


def open_source(name: str, data_dir: str = "", split: str = "train",
                image_key: str = "hr") -> TfdsHRSource:
    """Opens a prepared TFDS dataset with `tfds.data_source` (no download, no TensorFlow)."""
    if not name:
        raise ValueError("config.data.source='tfds' needs config.data.tfds_name "
                         "(e.g. 'div2k/bicubic_x2')")
    tfds = _import_tfds()
    try:
        src = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except NotImplementedError as e:
        raise ValueError(f"TFDS dataset {name!r} is not stored as ArrayRecord/Parquet, so it "
                         f"has no random-access source: rebuild it with "
                         f"--file_format=array_record ({e})") from None
    except Exception as e:                       # noqa: BLE001 (missing dataset, bad dir, ...)
        raise ValueError(f"cannot open TFDS dataset {name!r} split {split!r} in data_dir "
                         f"{data_dir or '(default)'}: {e}") from None
    return TfdsHRSource(src, image_key, name=f"{name}:{split}")


def source_from_config(config) -> TfdsHRSource:
    """`config.data.tfds_{name,data_dir,split,image_key}` -> TfdsHRSource."""
    d = config.data
    return open_source(d.get("tfds_name", ""), d.get("tfds_data_dir", ""),
                       d.get("tfds_split", "train"), d.get("tfds_image_key", "hr"))
