"""Writes LR benchmark/training images from HR ones (EDSR/SwinIR `LR_bicubic` layout).

    python -m jaxsr.tools.make_lr --hr ../shared/data/benchmarks/B100/HR \\
        --out /tmp/B100/LR_bicubic --scale 2 --scale 3 --scale 4

writes `<out>/X<s>/<name>x<s>.png` = MATLAB `imresize(modcrop(HR, s), 1/s, 'bicubic')` on
uint8 data, which reproduces the shipped Set5/Set14 LR files bit for bit. Grayscale HR
files (Set14 bridge.png) give grayscale LR files, as in the shipped sets.

`--degradation` picks an entry of `DEGRADATIONS`: a function
`(hr_uint8 HxWx3, scale: int, rng: np.random.Generator) -> lr_uint8`. Other modules can
add presets by defining a dict `MAKE_LR_PRESETS` of such functions in
`jaxsr.data.degradations`; it is merged in when the name is not found here.
"""
import argparse
import importlib
import os
import sys
from typing import Callable, Dict

import numpy as np

from jaxsr import config_base, fileio
from jaxsr.data.images import is_grayscale_file, list_images, modcrop, read_rgb
from jaxsr.ops.imresize import imresize_np



def bicubic_lr(hr: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """MATLAB bicubic x1/scale on uint8 (rounded after each pass), float64 weights."""
    del rng
    return imresize_np(hr, 1.0 / scale)


DEGRADATIONS: Dict[str, Callable] = {"bicubic": bicubic_lr}


def get_degradation(name: str) -> Callable:
    if name in DEGRADATIONS:
        return DEGRADATIONS[name]
    try:
        extra = getattr(importlib.import_module("jaxsr.data.degradations"), "MAKE_LR_PRESETS", {})
    except ImportError:
        extra = {}
    if name in extra:
        return extra[name]
    raise ValueError(f"--degradation={name!r} is not known; choose one of "
                     f"{sorted(set(DEGRADATIONS) | set(extra))}")


def _out_path(out_dir: str, hr_path: str, s: int) -> str:
    name = os.path.splitext(os.path.basename(hr_path))[0]
    return os.path.join(out_dir, f"X{s}", f"{name}x{s}.png")


def make_lr(hr_dir: str, out_dir: str, scales, degradation: str = "bicubic",
            seed: int = 0, verbose: bool = True, overwrite: bool = False) -> list:
    """Writes every HR image of `hr_dir` degraded at each scale; returns the paths written.
    Existing files are refused before anything is written unless `overwrite`."""
    paths = list_images(hr_dir)       # FileNotFoundError names the folder
    if not paths:
        raise FileNotFoundError(f"--hr: no images in {hr_dir}")
    fn = get_degradation(degradation)
    for s in scales:
        if int(s) != s or s < 1:
            raise ValueError(f"--scale must be a positive integer, got {s}")
    if not overwrite:
        for s in scales:
            for p in paths:
                fileio.refuse_existing(_out_path(out_dir, p, int(s)))
    rng = np.random.default_rng(seed)
    written = []
    for s in scales:
        s = int(s)
        for p in paths:
            hr = modcrop(read_rgb(p), s)
            lr = np.asarray(fn(hr, s, rng))
            if lr.shape[:2] != (hr.shape[0] // s, hr.shape[1] // s):
                raise RuntimeError(f"{degradation} gave {lr.shape} for {p} at x{s}; "
                                   f"expected {(hr.shape[0] // s, hr.shape[1] // s)}")
            out = _out_path(out_dir, p, s)
            fileio.write_png(out, lr[:, :, 0] if is_grayscale_file(p) else lr, overwrite=overwrite)
            written.append(out)
        if verbose:
            print(f"x{s}: wrote {len(paths)} images to {os.path.join(out_dir, f'X{s}')}")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxsr.tools.make_lr", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hr", help="folder of HR images (required unless --blind_set)")
    ap.add_argument("--out", required=True, help="output root; files go to <out>/X<s>/")
    ap.add_argument("--scale", type=float, action="extend", nargs="+", required=True,
                    help="integer scale(s): --scale 2 3 4 or --scale 2 --scale 3")
    ap.add_argument("--degradation", default="bicubic", help="default: bicubic (MATLAB)")
    ap.add_argument("--seed", type=int, default=0, help="for random degradations")
    ap.add_argument("--blind_set", action="append", default=[],
                    help="blind test set, e.g. Set5_gaussian8, Set14_BD, B100_DN15 (see "
                         "jaxsr.data.blind_sets), made from --benchmarks/<Set>/HR into "
                         "<out>/<name>/X<s>/ with a manifest.json; repeat for several")
    ap.add_argument("--benchmarks", default=os.path.join(config_base.data_root(), "benchmarks"),
                    help="benchmarks folder for --blind_set (default: config.eval.benchmarks_dir's)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace existing output files (refused by default)")
    args = ap.parse_args(argv)
    if not args.blind_set and not args.hr:
        ap.error("--hr is required (or give --blind_set)")
    try:
        if args.blind_set:
            from jaxsr.data import blind_sets
            blind_sets.write_sets(args.benchmarks, args.blind_set, args.scale, args.out, args.seed,
                                  overwrite=args.overwrite)
        else:
            make_lr(args.hr, args.out, args.scale, args.degradation, args.seed,
                    overwrite=args.overwrite)
    except (OSError, ValueError, KeyError) as e:      # OSError: missing or existing files
        print(f"make_lr: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
