"""Loop-by-loop NumPy reference of KAIR's random motion kernels (architectures.md section 6,
`blurkernel_synthesis(h=25)`), written from the recipe with explicit loops, rotation
matrices, threshold lists and scipy's convolve2d, to check the vectorised
`jaxsr.data.motion_kernels`. It consumes the same random numbers in the same layout."""
import math

import numpy as np
from scipy.signal import convolve2d


def _rotation(r):
    cx, sx = math.cos(r[0]), math.sin(r[0])
    cy, sy = math.cos(r[1]), math.sin(r[1])
    cz, sz = math.cos(r[2]), math.sin(r[2])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def trajectory(normals, steps=250):
    n_rot = normals[3:3 + 3 * (steps - 1)].reshape(steps - 1, 3)
    n_vel = normals[3 + 3 * (steps - 1):].reshape(steps - 1, 3)
    x, v, r = np.zeros((3, steps)), np.zeros((3, steps)), np.zeros((3, steps))
    v[:, 0] = normals[:3]
    for t in range(1, steps):
        force = n_rot[t - 1] / (t + 1) + r[:, t - 1]
        r[:, t] = r[:, t - 1] + 2 * math.pi / steps * force
        v[:, t] = v[:, t - 1] + n_vel[t - 1] / (t + 1)
        x[:, t] = x[:, t - 1] + _rotation(r[:, t]) @ v[:, t]
    return x


def binned_kernel(x, side):
    k = np.zeros((side, side))
    # the threshold lists as numpy's arange makes them: side or side + 1 entries
    xthr = np.arange(x[0].min(), x[0].max(), (x[0].max() - x[0].min()) / side)
    ythr = np.arange(x[1].min(), x[1].max(), (x[1].max() - x[1].min()) / side)
    for i in range(1, len(xthr)):
        for j in range(1, len(ythr)):
            inside = ((x[0] >= xthr[i - 1]) & (x[0] < xthr[i])
                      & (x[1] >= ythr[j - 1]) & (x[1] < ythr[j]))
            k[i - 1, j - 1] = inside.sum()
    k = k / k.sum()
    g = np.array([[math.exp(-(a * a + b * b) / 2) for b in (-1, 0, 1)] for a in (-1, 0, 1)])
    k = convolve2d(k, g / g.sum(), "same")
    return k / k.sum()


def opencv_linear_resize(k, rows, cols):
    """cv2.resize(k, (cols, rows), INTER_LINEAR) for float data, pixel by pixel."""
    def taps(dst, n_in, n_out):
        f = (dst + 0.5) * n_in / n_out - 0.5
        s = math.floor(f)
        f -= s
        if s < 0:
            s, f = 0, 0.0
        if s >= n_in - 1:
            s, f = n_in - 1, 0.0
        return s, min(s + 1, n_in - 1), f
    out = np.zeros((rows, cols))
    for i in range(rows):
        i0, i1, fi = taps(i, k.shape[0], rows)
        for j in range(cols):
            j0, j1, fj = taps(j, k.shape[1], cols)
            out[i, j] = ((1 - fi) * ((1 - fj) * k[i0, j0] + fj * k[i0, j1])
                         + fi * ((1 - fj) * k[i1, j0] + fj * k[i1, j1]))
    return out


def fspecial_gaussian(size, sigma):
    c = (size - 1) / 2.0
    g = np.array([[math.exp(-((i - c) ** 2 + (j - c) ** 2) / (2 * sigma * sigma))
                   for j in range(size)] for i in range(size)])
    g[g < np.finfo(float).eps * g.max()] = 0
    return g / g.sum()


def kernel_from_trajectory(x, u, size=25):
    k = framed_kernel(x, u, size)
    if k.sum() < 0.1:
        k = fspecial_gaussian(size, 0.1 + 6 * u[4])
    return k / k.sum()


def framed_kernel(x, u, size=25):
    """The kernel of trajectory x before the Gaussian fallback (steps 2-6)."""
    side = int(np.round(min(5 - math.log(u[0]) / 0.15, 27)))
    side = side + 1 - side % 2
    k = binned_kernel(x, side)
    pad = (size - side) // 2
    k = k[:size, :size] if pad < 0 else np.pad(k, pad)
    if math.floor(u[1] * 4) == 1:
        rows = size + min(math.floor(u[2] * (4 * size + 1)), 4 * size)
        cols = size + min(math.floor(u[3] * (4 * size + 1)), 4 * size)
        big = opencv_linear_resize(k, rows, cols)
        k = big[(rows - size) // 2:(rows - size) // 2 + size,
                (cols - size) // 2:(cols - size) // 2 + size]
    return k
