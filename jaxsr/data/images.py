"""Image files: reading as RGB uint8 with clear errors, writing PNG, listing folders.

Grayscale images are repeated to three channels and RGBA images lose their alpha channel
(DIV2KRK's LR files are RGBA with alpha always 255); 16-bit images are scaled to 8 bits.
Evaluation, training and inference all read through `read_rgb`, so every path treats
modes the same way. Folders and files may be gs:// (jaxsr.paths): listed and read through
the bucket's client, one object per image.
"""
import contextlib
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxsr import paths as path_layer

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file."""


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array -> HxWx3 uint8."""
    img = np.asarray(img)
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float64) / 257.0).astype(np.uint8)
    elif img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise ImageReadError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 2:                        # gray + alpha
        img = np.repeat(img[:, :, :1], 3, axis=2)
    elif img.shape[2] >= 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def read_rgb(path: str) -> np.ndarray:
    """Reads an image file as HxWx3 uint8 RGB; raises ImageReadError naming the file."""
    with _opened(path) as im:
        im.load()
        if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im).astype(np.uint16)
        else:
            arr = np.asarray(im)
    try:
        return to_rgb_uint8(arr)
    except ImageReadError as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from None


HEADER_BYTES = 1 << 16      # holds the size of a PNG (IHDR) and of nearly every JPEG


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header, not decoded: a local file is opened, a
    gs:// object's first HEADER_BYTES are read (the whole object only when its size lies
    beyond them, e.g. after a large EXIF block)."""
    if path_layer.is_remote(path):
        try:
            with Image.open(io.BytesIO(path_layer.read_head(path, HEADER_BYTES))) as im:
                return im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            pass                        # not in the head: the whole object below
    with _opened(path) as im:
        return im.size


@contextlib.contextmanager
def _opened(path: str):
    """The PIL image of `path`; what fails while it is open raises ImageReadError."""
    try:
        with Image.open(image_file(path)) as im:
            yield im
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from None


def image_file(path: str):
    """What PIL's Image.open takes for `path`: a local path as is, a gs:// object's bytes
    (one read: images are small)."""
    return io.BytesIO(path_layer.read_bytes(path)) if path_layer.is_remote(path) else path


def is_grayscale_file(path: str) -> bool:
    """True for single-channel files (Set14 bridge.png): the SR protocol scores them on
    their one channel, not on the Y of an RGB copy."""
    with Image.open(image_file(path)) as im:
        return im.mode in GRAY_MODES


def write_png(path: str, img: np.ndarray) -> None:
    """Writes HxWx3 (or HxW) uint8 as PNG, creating the folder; atomic (tmp + rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    Image.fromarray(np.asarray(img, np.uint8)).save(tmp)
    os.replace(tmp, path)


def list_images(folder: str) -> list[str]:
    """Sorted image paths in `folder` (not recursive); errors name the folder."""
    if not folder:
        raise FileNotFoundError("empty folder path")
    if not path_layer.isdir(folder):
        raise FileNotFoundError(f"image folder does not exist: {folder}")
    paths = sorted(path_layer.join(folder, f) for f in path_layer.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return paths


def list_image_dirs(folders: Sequence[str], what: str = "config.data.train_dirs") -> list[str]:
    """All images of several folders; a missing or empty folder is an error naming `what`."""
    if isinstance(folders, str):
        folders = (folders,)
    if not folders:
        raise ValueError(f"{what} is empty: give at least one folder of HR images")
    paths = []
    for d in folders:
        try:
            found = list_images(d)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{what}: {e}") from None
        if not found:
            raise FileNotFoundError(f"{what}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {d}")
        paths.extend(found)
    return paths


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crops H and W down to multiples of `scale` (top-left kept), as the SR protocol does."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]
