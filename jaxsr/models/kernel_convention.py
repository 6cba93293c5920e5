"""Blur kernels in USRNet's convention, LR = (HR conv k)[0::s, 0::s], from the conventions
the test sets store theirs in (DIV2KRK: KernelGAN's shifted correlation; Gaussian8/BD:
blur followed by MATLAB bicubic). Shared by `usrnet` (gt kernels) and `blind` (the
KENet + USRNet pipeline and its kernel PSNR); both import it, it imports neither."""
import numpy as np


def prepare_extras(config, extras: dict) -> dict:
    """The set's extras with the kernel in USRNet's convention: DIV2KRK's converted, and for
    sets made by blur + MATLAB bicubic (Gaussian8, BD) the effective kernel of both.

    For an evaluation loop to call before passing `kernel=` (gt_usrnet)."""
    if not extras or extras.get("kernel") is None:
        return extras
    if extras.get("source") == "DIV2KRK":
        k = div2krk_kernel_for_usrnet(extras["kernel"], config.scale)
        return dict(extras, kernel=k.astype(np.float32), source="DIV2KRK (USRNet convention)")
    if extras.get("downsample") == "bicubic":
        k = bicubic_effective_kernel(extras["kernel"], config.scale,
                                     extras.get("blur_mode", "correlate"))
        return dict(extras, kernel=k.astype(np.float32), downsample="bicubic (effective kernel)")
    return extras


def bicubic_effective_kernel(blur_kernel: np.ndarray, scale: int,
                             blur_mode: str = "correlate") -> np.ndarray:
    """The kernel k with LR = (HR conv k)[0::s, 0::s] (USRNet's model) for LR made by
    blurring with `blur_kernel` and then MATLAB bicubic x1/s (antialiased).

    MATLAB's output pixel i sits at HR position s*i + (s-1)/2 with weights
    cubic(d/s)/s over the offsets d, so the blur-then-bicubic map is the convolution with
    k(u) = sum_t g[t] b(u + t + (s-1)/2) (g the correlation kernel centred at 0), sampled
    at s*i: a wider kernel than the blur alone, shifted by (s-1)/2. Both axes at once:
    K = B G B^T with B[u, t] = b(u + t + (s-1)/2). Odd size, centre in the middle, sums
    to 1. (Per-pass uint8 rounding and image borders are outside the linear model.)"""
    from jaxsr.ops.imresize import cubic
    g = np.asarray(blur_kernel, np.float64)
    g = g[::-1, ::-1] if blur_mode == "convolve" else g
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] % 2 == 0:
        raise ValueError(f"expected an odd square blur kernel, got shape {g.shape}")
    r, s = g.shape[0] // 2, int(scale)
    shift = (s - 1) / 2
    half = int(np.ceil(2 * s + r + shift))            # covers |u + t + shift| < 2s
    u = np.arange(-half, half + 1, dtype=np.float64)
    t = np.arange(-r, r + 1, dtype=np.float64)
    z = (u[:, None] + t[None, :] + shift) / s
    b = cubic(z) / s
    k = b @ g @ b.T
    return k / k.sum()


def div2krk_kernel_for_usrnet(kernel: np.ndarray, scale: int) -> np.ndarray:
    """A DIV2KRK kernel in USRNet's convention (LR = (HR conv k)[0::s, 0::s]).

    DIV2KRK's LR is (approximately, data/README.md) floor(correlate(HR, kernel_shift(k, s)))
    [::s, ::s], with KernelGAN's `kernel_shift` moving the centre of mass to
    size//2 + 0.5 (s - size % 2) (after zero-padding so nothing is lost); correlation with
    a kernel is convolution with the flipped kernel. Odd output size, sums to 1.
    """
    from scipy import ndimage
    k = np.asarray(kernel, np.float64)
    shape = np.array(k.shape)
    wanted = shape // 2 + 0.5 * (scale - shape % 2)
    shift = wanted - np.array(ndimage.center_of_mass(k))
    pad = int(np.ceil(np.max(np.abs(shift)))) + 1
    k = ndimage.shift(np.pad(k, pad), shift)
    k = np.clip(k[::-1, ::-1], 0.0, None)
    return k / k.sum()
