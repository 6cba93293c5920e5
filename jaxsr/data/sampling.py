"""Where training crops come from (`config.data.crop`), as pure NumPy functions.

* 'random': a patch x patch crop anywhere in the image (EDSR, DAN, KAIR).
* 'center_random': NLCUnet's two-stage sampling: keep the central center_size x center_size
  square (512 in the paper; smaller images keep their full extent on that axis), then crop
  randomly inside it. NLCUnet did the centre crop offline on DF2K; doing it per sample
  gives the same distribution without a second copy of the data set.

Paired data (an LR file per HR file): `crop_pair` cuts aligned crops as EDSR's get_patch.
Augmentation stays dihedral (flips/transpose, `dihedral_flags` / `apply_dihedral`, EDSR's
`augment`) and is applied after cropping by the caller, with one draw for both of a pair.
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


def dihedral_flags(rng: np.random.Generator):
    """EDSR's `augment` draws: independent p=0.5 horizontal flip, vertical flip, transpose."""
    hflip, vflip, transpose = rng.random(3) < 0.5
    return bool(hflip), bool(vflip), bool(transpose)


def apply_dihedral(img: np.ndarray, flags) -> np.ndarray:
    """One dihedral transform (EDSR `augment`'s order: hflip, vflip, then transpose)."""
    hflip, vflip, transpose = flags
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    if transpose:
        img = img.transpose(1, 0, 2)
    return np.ascontiguousarray(img)


def crop_pair(hr: np.ndarray, lr: np.ndarray, rng: np.random.Generator, patch: int,
              scale: int, mode: str = "random", center_size: int = 512):
    """Aligned (HR patch x patch, LR patch/scale) crops of a pair: EDSR `common.get_patch`.

    As get_patch, the position is drawn on the LR grid, x first, then y
    (`ix = randrange(0, iw - ip + 1)`, then iy), and the HR crop starts at scale x that
    position. The LR extent used is the part whose HR pixels exist (min(lr side, hr side //
    scale)); 'center_random' keeps the central center_size // scale LR square first.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"config.data.crop={mode!r}: use one of {CROP_MODES}")
    if patch % scale:
        raise ValueError(f"config.train.patch_size={patch} (HR side) must be a multiple of "
                         f"config.scale={scale}")
    ip = patch // scale
    h = min(lr.shape[0], hr.shape[0] // scale)
    w = min(lr.shape[1], hr.shape[1] // scale)
    if ip < 1 or h < ip or w < ip:
        raise ValueError(f"LR image {h}x{w} is smaller than the {ip} px LR patch "
                         f"(config.train.patch_size={patch} / config.scale={scale})")
    top0, left0 = 0, 0
    if mode == "center_random":
        if center_size < patch:
            raise ValueError(f"config.data.center_size={center_size} is smaller than "
                             f"config.train.patch_size={patch}")
        top0, left0, h, w = center_box(h, w, center_size // scale)
    ix = left0 + int(rng.integers(0, w - ip + 1))
    iy = top0 + int(rng.integers(0, h - ip + 1))
    tx, ty = scale * ix, scale * iy
    return hr[ty:ty + patch, tx:tx + patch], lr[iy:iy + ip, ix:ix + ip]
