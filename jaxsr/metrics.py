"""BasicSR-compatible PSNR / SSIM on uint8-valued HWC RGB images (host-side NumPy/SciPy).

Protocol of the SR tables (BasicSR `calculate_psnr` / `calculate_ssim`, EDSR, RCAN, NLSN):
SR output clamped to [0, 1], x255, rounded to uint8 (`quantize`); `crop_border` pixels
(= scale) shaved from every side; computed on the BT.601 luma
Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 in float64, not rounded (`round_y=True`
gives KAIR / MATLAB-on-uint8 behaviour, ~0.01 dB different); PSNR = 10 log10(255^2 / MSE)
(inf when MSE = 0); SSIM with an 11x11 Gaussian window (sigma 1.5) over the 'valid'
region, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, averaged over channels on RGB.

Grayscale ground truths (Set14 bridge.png): pass them single-channel (HxW or HxWx1). They
are then compared without the Y transform, as the MATLAB evaluation scripts do (the
published bicubic Set14 row depends on it: 30.23 dB at x2 this way, 30.32 dB when the gray
image is replicated to RGB and converted to Y, which is what BasicSR/EDSR Python code does).

BasicSR computes Y in float32 before going to float64; doing it in float64 changes PSNR by
< 1e-5 dB.
"""
import numpy as np
from scipy import ndimage

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], np.float64)


def quantize(sr) -> np.ndarray:
    """Float image in [0, 1] (NumPy or JAX) -> uint8: clamp, x255, round (half to even,
    like BasicSR `tensor2img` and EDSR `quantize`)."""
    x = np.clip(np.asarray(sr, np.float64), 0.0, 1.0) * 255.0
    return np.round(x).astype(np.uint8)


def rgb_to_y(img, round_y: bool = False) -> np.ndarray:
    """HxWx3 RGB on the 0-255 scale -> HxW float64 BT.601 Y in [16, 235]."""
    img = np.asarray(img, np.float64)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"rgb_to_y expects HxWx3 RGB, got shape {img.shape}")
    y = img @ _Y_WEIGHTS / 255.0 + 16.0
    return np.round(y) if round_y else y


def rgb_to_gray(img, round_y: bool = False) -> np.ndarray:
    """HxWx3 RGB (0-255) -> HxW full-range BT.601 luma 0.299 R + 0.587 G + 0.114 B.

    It is (Y - 16) * 255 / 219, and equals the channel value when R = G = B: the value to
    compare against a grayscale ground truth.
    """
    y = (rgb_to_y(img) - 16.0) * (255.0 / 219.0)
    return np.round(y) if round_y else y


def _channels_last(img):
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"expected HxW, HxWx1 or HxWx3 images, got shape {img.shape}")
    return img


def _prepare(img, img2, crop_border: int, test_y_channel: bool, round_y: bool):
    img, img2 = _channels_last(img), _channels_last(img2)
    if img.shape[:2] != img2.shape[:2]:
        raise ValueError(f"image sizes differ: {img.shape} vs {img2.shape}")
    # A single-channel image is a grayscale ground truth (MATLAB scripts convert to Y only
    # when size(im, 3) == 3): it is compared as is, and a 3-channel partner becomes luma.
    if img.shape[2] != img2.shape[2]:
        img, img2 = [rgb_to_gray(x, round_y)[..., None] if x.shape[2] == 3 else x
                     for x in (img, img2)]
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"nothing left after crop_border={crop_border}")
    if test_y_channel and img.shape[2] == 3:
        img, img2 = rgb_to_y(img, round_y)[..., None], rgb_to_y(img2, round_y)[..., None]
    return img.astype(np.float64), img2.astype(np.float64)


def calculate_psnr(img, img2, crop_border: int = 0, test_y_channel: bool = False,
                   round_y: bool = False) -> float:
    """PSNR (dB) of two HxWx3 / HxW(x1) images with values on the 0-255 scale."""
    a, b = _prepare(img, img2, crop_border, test_y_channel, round_y)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian (OpenCV `getGaussianKernel`); the 2-D window is its outer."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation with window outer(g, g), 'valid' part only."""
    r = g.size // 2
    y = ndimage.correlate1d(x, g, axis=0, mode="constant")[r:-r]
    return ndimage.correlate1d(y, g, axis=1, mode="constant")[:, r:-r]


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = gaussian_window_1d()
    if min(a.shape) < g.size:
        raise ValueError(f"SSIM needs at least {g.size}x{g.size} pixels after cropping, "
                         f"got {a.shape}")
    mu1, mu2 = _filter_valid(a, g), _filter_valid(b, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(a * a, g) - mu1_sq
    s2 = _filter_valid(b * b, g) - mu2_sq
    s12 = _filter_valid(a * b, g) - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(ssim_map.mean())


def calculate_ssim(img, img2, crop_border: int = 0, test_y_channel: bool = False,
                   round_y: bool = False) -> float:
    """SSIM of two HxWx3 / HxW(x1) images on the 0-255 scale (mean over channels)."""
    a, b = _prepare(img, img2, crop_border, test_y_channel, round_y)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))
