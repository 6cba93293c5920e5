"""Where training crops come from (`config.data.crop`), as pure NumPy functions.

* 'random': a patch x patch crop anywhere in the image (EDSR, DAN, KAIR).
* 'center_random': NLCUnet's two-stage sampling: keep the central center_size x center_size
  square (512 in the paper; smaller images keep their full extent on that axis), then crop
  randomly inside it. NLCUnet did the centre crop offline on DF2K; doing it per sample
  gives the same distribution without a second copy of the data set.

Augmentation stays dihedral (flips/transpose) and is applied after cropping by the caller.
"""
import numpy as np

CROP_MODES = ("random", "center_random")


def center_box(h: int, w: int, center_size: int):
    """(top, left, height, width) of the central center_size square, clipped to the image."""
    ch, cw = min(center_size, h), min(center_size, w)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crop_hr(img: np.ndarray, rng: np.random.Generator, patch: int, mode: str = "random",
            center_size: int = 512) -> np.ndarray:
    """A patch x patch crop of an HxWxC image, drawn with `rng` (grain's per-element rng).

    Raises ValueError (naming the config key) for an unknown mode, a centre square smaller
    than the patch, or an image smaller than the patch.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"config.data.crop={mode!r}: use one of {CROP_MODES}")
    h, w = img.shape[:2]
    if patch < 1 or h < patch or w < patch:
        raise ValueError(f"image {h}x{w} is smaller than the {patch} px training patch "
                         "(config.train.patch_size)")
    top0, left0 = 0, 0
    if mode == "center_random":
        if center_size < patch:
            raise ValueError(f"config.data.center_size={center_size} is smaller than "
                             f"config.train.patch_size={patch}")
        top0, left0, h, w = center_box(h, w, center_size)
    top = top0 + int(rng.integers(0, h - patch + 1))
    left = left0 + int(rng.integers(0, w - patch + 1))
    return img[top:top + patch, left:left + patch]
