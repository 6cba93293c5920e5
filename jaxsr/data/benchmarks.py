"""Benchmark sets for evaluation: `<root>/<Set>/HR` (+ `LR_bicubic/X<s>/<name>x<s>.png`).

Also reads BasicSR's layout (`<Set>/GTmod12` + `<Set>/LRbicx<s>/<name>.png`). When no LR
files exist they are made on the fly with the MATLAB-exact bicubic from the modcropped HR,
which is how the shipped LR files were made. `skimage_val` is the held-out part of the
embedded demo photos. Other names (blurred/noisy sets, DIV2KRK) resolve through
`jaxsr.data.blind_sets`. The root may be a gs:// folder (jaxsr.paths; one listing per
folder; `list_set` reads each image's header, `load` the image).

Grayscale ground truths (Set14 bridge.png), `gray` (config.eval.gray): 'gray' keeps their
one channel, scored against the luma of the SR output (the MATLAB scripts behind the
published tables); 'y' keeps them replicated to RGB, scored on Y like every other image
(the EDSR-PyTorch and BasicSR Python testers): +20 log10(255/219) = +1.32 dB on PSNR for
such an image. The model sees an RGB LR either way.
"""
import os
from typing import NamedTuple

import numpy as np

from jaxsr import paths
from jaxsr.data import images

GRAY_CONVENTIONS = ("gray", "y")


class Sample(NamedTuple):
    name: str
    hr: np.ndarray          # uint8 HxWx3 (HxWx1 for a grayscale file), modcropped
    lr: np.ndarray          # uint8 (H/s)x(W/s)x3
    extras: dict            # e.g. {'kernel': ...} for blind sets

    @property
    def lr_shape(self) -> tuple[int, int]:
        return tuple(self.lr.shape[:2])

    def load(self) -> "Sample":
        return self


class SampleFile(NamedTuple):
    """An image of a folder set not read yet (`list_set`): its LR (H, W) comes from the HR
    file's header, so a spread evaluation deals the images by shape and each process reads
    (and makes the LR of) only the images dealt to it."""
    name: str
    lr_shape: tuple[int, int]
    hr_path: str
    lr_files: dict          # {name: LR file} when the set has one for this image
    scale: int
    gray: str

    def load(self) -> Sample:
        return _pair(self.hr_path, self.lr_files, self.scale, self.gray)


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    from jaxsr.ops.imresize import imresize_np
    return imresize_np(images.modcrop(hr, scale), 1.0 / scale)


def check_gray(gray: str) -> str:
    if gray not in GRAY_CONVENTIONS:
        raise ValueError(f"config.eval.gray={gray!r}: use 'gray' (grayscale ground truths "
                         "scored on their one channel, as MATLAB) or 'y' (replicated to RGB "
                         "and scored on Y, as the EDSR-PyTorch/BasicSR testers)")
    return gray


def _hr_dir(set_dir: str) -> str | None:
    if not paths.isdir(set_dir):
        return None
    found = set(paths.listdir(set_dir))
    for sub in ("HR", "GTmod12", "GT"):
        if sub in found and paths.isdir(paths.join(set_dir, sub)):
            return paths.join(set_dir, sub)
    return None


def _lr_files(set_dir: str, scale: int) -> dict:
    """{HR stem: LR file} of the LR folders that exist (each listed once)."""
    out = {}
    for folder, suffix in ((paths.join(set_dir, f"LRbicx{scale}"), ".png"),
                           (paths.join(set_dir, "LR_bicubic", f"X{scale}"), f"x{scale}.png")):
        if paths.isdir(folder):
            out.update({f[:-len(suffix)]: paths.join(folder, f)
                        for f in paths.listdir(folder) if f.endswith(suffix)})
    return out


def _pair(hr_path: str, lr_files: dict, scale: int, gray: str) -> Sample:
    stem = os.path.splitext(paths.basename(hr_path))[0]
    hr = images.modcrop(images.read_rgb(hr_path), scale)
    gt = hr[:, :, :1] if gray == "gray" and images.is_grayscale_file(hr_path) else hr
    lr_path = lr_files.get(stem)
    if lr_path is None:
        return Sample(stem, gt, bicubic_lr(hr, scale), {})
    lr = images.read_rgb(lr_path)
    if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
        raise ValueError(f"LR file {lr_path} is {lr.shape[1]}x{lr.shape[0]}, but its HR {hr_path} "
                         f"modcropped to x{scale} is {hr.shape[1]}x{hr.shape[0]}: the LR was made "
                         "from a different HR (e.g. a GTmod12 pack); regenerate it with "
                         "`python -m jaxsr.tools.make_lr` or set config.eval.use_lr_files=False")
    return Sample(stem, gt, lr, {})


def available_sets(root: str) -> list[str]:
    if not paths.isdir(root):
        return []
    return sorted(d for d in paths.listdir(root) if _hr_dir(paths.join(root, d)))


def load_set(root: str, name: str, scale: int, *, use_lr_files: bool = True,
             max_images: int = 0, generated_dir: str = "", gray: str = "gray") -> list[Sample]:
    """All (HR, LR) pairs of one benchmark set, sorted by name; `gray`: how a grayscale
    ground truth is kept (module docstring)."""
    return [s.load() for s in list_set(root, name, scale, use_lr_files=use_lr_files,
                                       max_images=max_images, generated_dir=generated_dir,
                                       gray=gray)]


def list_set(root: str, name: str, scale: int, *, use_lr_files: bool = True,
             max_images: int = 0, generated_dir: str = "",
             gray: str = "gray") -> list[Sample | SampleFile]:
    """`load_set`'s images, a folder set's as SampleFile (read by `.load()`), the others
    (skimage_val, blind sets) already loaded; every item has `.name`, `.lr_shape`, `.load()`."""
    check_gray(gray)
    if name == "skimage_val":
        from jaxsr.data import pipeline
        samples = [Sample(os.path.splitext(os.path.basename(p))[0],
                          images.modcrop(images.read_rgb(p), scale), None, {})
                   for p in pipeline.skimage_paths("val")]
        samples = [s._replace(lr=bicubic_lr(s.hr, scale)) for s in samples]
        return samples[:max_images] if max_images else samples
    if not paths.isdir(root):
        raise FileNotFoundError(
            f"config.eval.benchmarks_dir={root!r} does not exist: get the standard sets with "
            "`python -m jaxsr.tools.data get benchmarks --out data` (then "
            "--config.eval.benchmarks_dir=data/benchmarks, or JAXSR_DATA=data)")
    set_dir = paths.join(root, name)
    hr_dir = _hr_dir(set_dir)
    if hr_dir is None:
        return _load_derived_set(root, name, scale, max_images, generated_dir)
    files = images.list_images(hr_dir)
    if not files:
        raise FileNotFoundError(f"benchmark set {name}: no images in {hr_dir}")
    if max_images:
        files = files[:max_images]
    lr_files = _lr_files(set_dir, scale) if use_lr_files else {}
    return [_sample_file(p, lr_files, scale, gray) for p in files]


def _sample_file(hr_path: str, lr_files: dict, scale: int, gray: str) -> SampleFile:
    stem = os.path.splitext(paths.basename(hr_path))[0]
    width, height = images.image_size(hr_path)
    mine = {stem: lr_files[stem]} if stem in lr_files else {}
    return SampleFile(stem, (height // scale, width // scale), hr_path, mine, scale, gray)


def _load_derived_set(root: str, name: str, scale: int, max_images: int,
                      generated_dir: str) -> list[Sample]:
    """Blurred / noisy / DIV2KRK sets (read from `generated_dir` when written there by
    make_lr, else made on the fly, seeded), or a clear error listing what exists."""
    try:
        from jaxsr.data import blind_sets
        samples = blind_sets.load_set(root, name, scale, generated_dir=generated_dir,
                                      max_images=max_images)
    except (ImportError, KeyError):
        sets = available_sets(root)
        raise FileNotFoundError(
            f"benchmark set {name!r} not found: no folder {paths.join(root, name)}/HR "
            f"(config.eval.benchmarks_dir={root!r} has: {', '.join(sets) or 'nothing'}; "
            "blind sets are named e.g. Set5_gaussian8, Set14_BD, Set5_DN15, DIV2KRK)") from None
    return [Sample(*s) for s in samples]
