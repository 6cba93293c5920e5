"""Paired LR/HR training data: which LR file goes with each HR file, and reading a pair.

`config.data.train_lr_dirs` names one LR folder per `config.data.train_dirs` entry (same
order; a set's weight stays on its train_dirs entry). `{scale}` in a folder is replaced by
`config.scale`, so `DIV2K_train_LR_bicubic/X{scale}` follows `--config.scale`.

Names: the HR file `<stem>.<ext>` is paired with the LR file of the same folder entry
named `<stem>x<scale>.<any ext>` (EDSR/DIV2K: `0001.png` <-> `X2/0001x2.png`) or
`<stem>.<any ext>` (BasicSR PairedImageDataset: same name in `dataroot_gt` and
`dataroot_lq`); `config.data.lr_name_template` (BasicSR's filename_tmpl, e.g.
'{}_LR{scale}') names it instead. Exactly one must exist: none, or both, is an error naming
the HR file and what was looked for. LR files without an HR file are ignored (logged).

Sizes: the LR side must be the HR side // scale (HR sides that are multiples of the scale,
as DIV2K's, or the LR of a modcropped HR) or ceil(HR side / scale) (MATLAB imresize of an
HR side that is not a multiple). Anything else is an error naming both files. Crops use the
LR extent whose HR pixels exist, min(LR side, HR side // scale) (sampling.crop_pair).
"""
import logging
import math
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from jaxsr.data import images


class Pair(NamedTuple):
    hr: np.ndarray            # HxWx3 uint8
    lr: np.ndarray            # (H/s)x(W/s)x3 uint8


class PairError(ValueError):
    """An HR file without its LR file, or a pair of the wrong sizes; names both files."""


def lr_folder(template: str, scale: int) -> str:
    """`{scale}` in an LR folder -> the scale (`X{scale}` -> `X2`)."""
    return template.replace("{scale}", str(scale))


def lr_dirs(config, n_sets: int) -> list[str]:
    """config.data.train_lr_dirs as folders, one per train_dirs entry ([] = unpaired)."""
    dirs = config.data.get("train_lr_dirs", ()) or ()
    if isinstance(dirs, str):
        dirs = (dirs,)
    if not dirs:
        return []
    if len(dirs) != n_sets:
        raise ValueError(f"config.data.train_lr_dirs has {len(dirs)} folder(s) and "
                         f"config.data.train_dirs {n_sets}: give one LR folder per HR folder, "
                         "in the same order (or none, to synthesise LR on the device)")
    for i, d in enumerate(dirs):
        if not isinstance(d, str) or not d:
            raise ValueError(f"config.data.train_lr_dirs[{i}]={d!r}: give a folder")
    return [lr_folder(d, config.scale) for d in dirs]


def lr_stems(stem: str, scale: int, template: str = "") -> tuple[str, ...]:
    """The LR names (without extension) an HR stem may pair with: `template` formatted with
    the stem and scale (BasicSR's filename_tmpl, e.g. '{}x{scale}'), else both layouts."""
    if template:
        return (template.format(stem, scale=scale),)
    return (f"{stem}x{scale}", stem)


def match(hr_paths, lr_dir: str, scale: int, where: str,
          template: str = "") -> list[tuple[str, str]]:
    """[(hr path, lr path)] for every HR file; an HR file without exactly one LR match
    fails naming it, the LR folder and the names tried."""
    try:
        lr_paths = images.list_images(lr_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where}: {e} (the LR files of paired training; set "
                                "config.data.train_lr_dirs=() to synthesise the LR from "
                                "the HR on the device instead)") from None
    by_stem = {}
    for p in lr_paths:
        by_stem.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(p)
    pairs, used = [], set()
    for hr in hr_paths:
        stem = os.path.splitext(os.path.basename(hr))[0]
        names = lr_stems(stem, scale, template)
        found = [p for n in names for p in by_stem.get(n, ())]
        if len(found) != 1:
            what = "no LR file" if not found else f"{len(found)} LR files ({', '.join(found)})"
            tried = (f"{names[0]}.* (DIV2K/EDSR) and {names[1]}.* (same name)"
                     if len(names) == 2 else f"{names[0]}.* (lr_name_template {template!r})")
            raise PairError(f"{where}: {what} for the HR file {hr} in {lr_dir}; looked for "
                            f"{tried}, exactly one must exist")
        pairs.append((hr, found[0]))
        used.add(found[0])
    unused = len(lr_paths) - len(used)
    if unused:
        logging.info("%s: %d LR file(s) in %s have no HR file and are not used",
                     where, unused, lr_dir)
    return pairs


def check_sizes(hr_hw, lr_hw, scale: int, hr_name: str, lr_name: str) -> None:
    """Raises PairError naming both files unless each LR side is the HR side // scale or
    ceil(HR side / scale)."""
    ok = all(l in (h // scale, math.ceil(h / scale)) for h, l in zip(hr_hw, lr_hw))
    if not ok:
        raise PairError(
            f"LR {lr_name} is {lr_hw[1]}x{lr_hw[0]} (WxH) but HR {hr_name} is "
            f"{hr_hw[1]}x{hr_hw[0]}: at scale {scale} the LR must be "
            f"{hr_hw[1] // scale}x{hr_hw[0] // scale} (check config.scale and "
            "config.data.train_lr_dirs)")


def usable_extent(hr_hw, lr_hw, scale: int) -> tuple[int, int]:
    """The LR (height, width) whose HR pixels exist (what crop_pair draws from)."""
    return tuple(min(l, h // scale) for h, l in zip(hr_hw, lr_hw))


def _size(path: str):
    with Image.open(path) as im:
        w, h = im.size
    return h, w


def usable_pairs(pairs, patch: int, scale: int) -> list[tuple[str, str]]:
    """Drops pairs with an unreadable file or smaller than the patch, with a warning each;
    a wrongly sized pair is an error (PairError). Sizes come from the file headers."""
    keep = []
    for hr, lr in pairs:
        try:
            hr_hw, lr_hw = _size(hr), _size(lr)
        except Exception as e:                      # noqa: BLE001 (any unreadable file)
            logging.warning("skipping training pair %s / %s: %s", hr, lr, e)
            continue
        check_sizes(hr_hw, lr_hw, scale, hr, lr)
        if min(usable_extent(hr_hw, lr_hw, scale)) < patch // scale:
            logging.warning("skipping training pair %s / %s: smaller than the %d px patch",
                            hr, lr, patch)
            continue
        keep.append((hr, lr))
    return keep


def read_pair(hr_path: str, lr_path: str, scale: int) -> Pair:
    """Both images as RGB uint8, sizes checked (PairError naming both files)."""
    hr, lr = images.read_rgb(hr_path), images.read_rgb(lr_path)
    check_sizes(hr.shape[:2], lr.shape[:2], scale, hr_path, lr_path)
    return Pair(hr, lr)
