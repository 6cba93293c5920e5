"""Benchmark sets for evaluation: `<root>/<Set>/HR` (+ `LR_bicubic/X<s>/<name>x<s>.png`).

Also reads BasicSR's layout (`<Set>/GTmod12` + `<Set>/LRbicx<s>/<name>.png`). When no LR
files exist they are made on the fly with the MATLAB-exact bicubic from the modcropped HR,
which is how the shipped LR files were made. `skimage_val` is the held-out part of the
embedded demo photos. Other names (blurred/noisy sets, DIV2KRK) resolve through
`jaxsr.data.blind_sets`.
"""
import os
from typing import NamedTuple

import numpy as np

from jaxsr.data import images


class Sample(NamedTuple):
    name: str
    hr: np.ndarray          # uint8 HxWx3 (HxWx1 for a grayscale file), modcropped
    lr: np.ndarray          # uint8 (H/s)x(W/s)x3
    extras: dict            # e.g. {'kernel': ...} for blind sets


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    from jaxsr.ops.imresize import imresize_np
    return imresize_np(images.modcrop(hr, scale), 1.0 / scale)


def _hr_dir(set_dir: str) -> str | None:
    for sub in ("HR", "GTmod12", "GT"):
        if os.path.isdir(os.path.join(set_dir, sub)):
            return os.path.join(set_dir, sub)
    return None


def _lr_file(set_dir: str, stem: str, scale: int) -> str | None:
    for path in (os.path.join(set_dir, "LR_bicubic", f"X{scale}", f"{stem}x{scale}.png"),
                 os.path.join(set_dir, f"LRbicx{scale}", f"{stem}.png")):
        if os.path.isfile(path):
            return path
    return None


def _pair(hr_path: str, set_dir: str, scale: int, use_lr_files: bool) -> Sample:
    stem = os.path.splitext(os.path.basename(hr_path))[0]
    hr = images.modcrop(images.read_rgb(hr_path), scale)
    # A grayscale ground truth is scored on its one channel (the MATLAB scripts behind the
    # published tables); the model still sees an RGB LR.
    gt = hr[:, :, :1] if images.is_grayscale_file(hr_path) else hr
    lr_path = _lr_file(set_dir, stem, scale) if use_lr_files else None
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
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if _hr_dir(os.path.join(root, d)))


def load_set(root: str, name: str, scale: int, *, use_lr_files: bool = True,
             max_images: int = 0, generated_dir: str = "") -> list[Sample]:
    """All (HR, LR) pairs of one benchmark set, sorted by name."""
    if name == "skimage_val":
        from jaxsr.data import pipeline
        paths = pipeline.skimage_paths("val")
        samples = [Sample(os.path.splitext(os.path.basename(p))[0],
                          images.modcrop(images.read_rgb(p), scale), None, {}) for p in paths]
        samples = [s._replace(lr=bicubic_lr(s.hr, scale)) for s in samples]
        return samples[:max_images] if max_images else samples
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"config.eval.benchmarks_dir={root!r} does not exist: get the standard sets with "
            "`python -m jaxsr.tools.data get benchmarks --out data` (then "
            "--config.eval.benchmarks_dir=data/benchmarks, or JAXSR_DATA=data)")
    set_dir = os.path.join(root, name)
    hr_dir = _hr_dir(set_dir)
    if hr_dir is None:
        return _load_derived_set(root, name, scale, max_images, generated_dir)
    paths = images.list_images(hr_dir)
    if not paths:
        raise FileNotFoundError(f"benchmark set {name}: no images in {hr_dir}")
    if max_images:
        paths = paths[:max_images]
    return [_pair(p, set_dir, scale, use_lr_files) for p in paths]


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
            f"benchmark set {name!r} not found: no folder {os.path.join(root, name)}/HR "
            f"(config.eval.benchmarks_dir={root!r} has: {', '.join(sets) or 'nothing'}; "
            "blind sets are named e.g. Set5_gaussian8, Set14_BD, Set5_DN15, DIV2KRK)") from None
    return [Sample(*s) for s in samples]
