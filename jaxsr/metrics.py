"""BasicSR-compatible PSNR / SSIM on uint8-valued HWC RGB images (host-side NumPy/SciPy).

Protocol of the SR tables (BasicSR `calculate_psnr` / `calculate_ssim`, EDSR, RCAN, NLSN):
SR output clamped to [0, 1], x255, rounded to uint8 (`quantize`); `crop_border` pixels
(= scale) shaved from every side; computed on the BT.601 luma
Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 in float64, not rounded (`round_y=True`
gives KAIR / MATLAB-on-uint8 behaviour, ~0.01 dB different); PSNR = 10 log10(255^2 / MSE)
(inf when MSE = 0); SSIM with an 11x11 Gaussian window (sigma 1.5) over the 'valid'
region, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, averaged over channels on RGB.

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


def _prepare(img, img2, crop_border: int, test_y_channel: bool, round_y: bool):
    img, img2 = np.asarray(img), np.asarray(img2)
    if img.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img.shape} vs {img2.shape}")
    if img.ndim == 2:
        img, img2 = img[:, :, None], img2[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"expected HxW or HxWxC images, got shape {img.shape}")
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
    """PSNR (dB) of two HWC (or HW) images with values on the 0-255 scale."""
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
    """SSIM of two HWC (or HW) images with values on the 0-255 scale (channel mean)."""
    a, b = _prepare(img, img2, crop_border, test_y_channel, round_y)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))
