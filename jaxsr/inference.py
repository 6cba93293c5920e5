"""Super-resolving whole images: padding, tiling with seamless blending, the official
EDSR/NLSN/DLSN `forward_chop`, x8 self-ensemble and memory-aware automatic tiling.

Everything here works on one HxWxC float32 numpy image in [0, 1] and a batched forward
`apply_fn(lr_nhwc) -> sr_nhwc` (build it with `bind(model, params)`, or pass any jitted
function). Each distinct input shape is compiled once (`compiled_forward`, in
jaxsr.forward with padding and batched runs); the compiled executable's XLA memory
analysis is what decides whether a whole image fits.

Modes (`super_resolve`):
* whole image (default): reflect-pad to the model's `multiple`/`min_size`, run, crop back.
  If the estimated peak memory exceeds `max_memory` (or the device's free memory) the image
  is tiled automatically, and the decision is logged and reported in `info`.
* `tile=N`: overlapping N x N LR tiles (at least `tile_overlap` px shared by neighbours),
  run `tile_batch` at a time, blended with a raised-cosine window that is zero in the outer
  quarter of each overlap and one beyond its inner quarter. For a convolution-only model
  the result equals the whole-image result (up to float rounding) when
  `tile_overlap >= 4 * receptive-field radius` (LR px); for attention models each tile
  only attends within itself, so results differ from whole-image ones (no seams, though).
* `chop=True`: EDSR-PyTorch's `forward_chop(shave=10, min_size=120000)` exactly
  (quadrant sizes rounded up to multiples of 4 / 8, recursion, crop stitching), so
  converted official checkpoints reproduce official numbers. All patches of one level
  have the same shape, so the leaves run batched with one compile.
* `self_ensemble=True`: the 8 dihedral transforms in the official order, each run with the
  mode above, inverted and averaged.
"""
import math
from typing import Callable, Optional

import numpy as np
from absl import logging

from jaxsr.forward import (  # noqa: F401 (bind, BoundApply, ...: entry points used via inference)
    ApplyFn, BoundApply, available_memory_bytes, bind, compiled_forward, device_of,
    forward_memory_bytes, num_compiled, pad_image, padded_size, run_batch)


# ---------------------------------------------------------------------------------------
# Tiling with a smooth blending window
# ---------------------------------------------------------------------------------------

def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced tile starts covering [0, length); neighbours share >= overlap px."""
    if tile >= length:
        return [0]
    if overlap >= tile:
        raise ValueError(f"tile_overlap={overlap} must be smaller than tile={tile}")
    n = math.ceil((length - overlap) / (tile - overlap))
    return [int(round(s)) for s in np.linspace(0, length - tile, n)]


def _ramp(d: np.ndarray, overlap: float) -> np.ndarray:
    """0 for d < overlap/4, raised cosine up to 1 at 3*overlap/4; w(d) + w(overlap-d) = 1."""
    t = np.clip((d - overlap / 4) / (overlap / 2), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def blend_weights(starts: list[int], tile: int, length: int, scale: int) -> list[np.ndarray]:
    """1-D HR weights of each tile along one axis: ramps only where a neighbour overlaps
    (image borders keep weight 1), each ramp sized by the actual overlap with it."""
    size = min(tile, length) * scale
    d = np.arange(size) + 0.5  # pixel centres, in HR px from the tile's start
    weights = []
    for i, s in enumerate(starts):
        w = np.ones(size)
        if i > 0:
            ov = (starts[i - 1] + tile - s) * scale
            w *= _ramp(d, ov)
        if i + 1 < len(starts):
            ov = (s + tile - starts[i + 1]) * scale
            w *= _ramp(size - d, ov)
        weights.append(w)
    return weights


def forward_tiled(apply_fn: ApplyFn, lr: np.ndarray, *, scale: int, tile: int,
                  tile_overlap: int = 32, multiple: int = 1, min_size: int = 1,
                  tile_batch: int = 4, progress: bool = False) -> np.ndarray:
    """Overlapping tiles run `tile_batch` at a time and blended (see module docstring)."""
    h, w = lr.shape[:2]
    x = pad_image(lr, multiple, min_size)
    ph, pw = x.shape[:2]
    tile = padded_size(tile, multiple, min_size)
    th, tw = min(tile, ph), min(tile, pw)
    ys, xs = tile_starts(ph, tile, tile_overlap), tile_starts(pw, tile, tile_overlap)
    wy, wx = blend_weights(ys, tile, ph, scale), blend_weights(xs, tile, pw, scale)
    coords = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    tiles = np.stack([x[ys[i]:ys[i] + th, xs[j]:xs[j] + tw] for i, j in coords])
    bar = _bar(progress, math.ceil(len(coords) / max(tile_batch, 1)), "tiles")
    sr = run_batch(apply_fn, tiles, scale=scale, batch=tile_batch, progress=bar)
    if bar is not None:
        bar.close()
    acc = np.zeros((ph * scale, pw * scale, sr.shape[-1]), np.float32)
    norm = np.zeros((ph * scale, pw * scale, 1), np.float32)
    for (i, j), t in zip(coords, sr):
        wt = (wy[i][:, None] * wx[j][None, :]).astype(np.float32)[..., None]
        sl = np.s_[ys[i] * scale:(ys[i] + th) * scale, xs[j] * scale:(xs[j] + tw) * scale]
        acc[sl] += wt * t
        norm[sl] += wt
    return (acc / norm)[: h * scale, : w * scale]


def _bar(progress, total, desc):
    if not progress or total <= 1:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, unit="batch")


# ---------------------------------------------------------------------------------------
# EDSR-PyTorch forward_chop (official geometry, batched per recursion level)
# ---------------------------------------------------------------------------------------

def chop_sizes(h: int, w: int, shave: int = 10) -> tuple[int, int]:
    """Quadrant size of the official chop: half + shave, then += 4 - h % 4 (always adds
    1..4) and += 8 - w % 8 (always adds 1..8)."""
    h_size, w_size = h // 2 + shave, w // 2 + shave
    return h_size + 4 - h_size % 4, w_size + 8 - w_size % 8


def _chop_level(run_leaves, x: np.ndarray, scale: int, shave: int, min_size: int):
    """x: N patches NHWC of one recursion level -> their N SR outputs."""
    n, h, w = x.shape[:3]
    h_half, w_half = h // 2, w // 2
    h_size, w_size = chop_sizes(h, w, shave)
    quads = np.concatenate([x[:, 0:h_size, 0:w_size], x[:, 0:h_size, w - w_size:w],
                            x[:, h - h_size:h, 0:w_size], x[:, h - h_size:h, w - w_size:w]])
    if w_size * h_size < min_size:
        sr = run_leaves(quads)
    elif (h_size, w_size) == (h, w):
        raise ValueError(f"chop min_size={min_size} is too small: a {h}x{w} patch would be "
                         "split forever (the official code recurses without end here)")
    else:
        sr = _chop_level(run_leaves, quads, scale, shave, min_size)
    sr = sr.reshape((4, n) + sr.shape[1:])
    H, W, hh, wh, hs, ws = (scale * v for v in (h, w, h_half, w_half, h_size, w_size))
    out = np.empty((n, H, W, sr.shape[-1]), sr.dtype)
    out[:, 0:hh, 0:wh] = sr[0][:, 0:hh, 0:wh]
    out[:, 0:hh, wh:W] = sr[1][:, 0:hh, ws - W + wh:ws]
    out[:, hh:H, 0:wh] = sr[2][:, hs - H + hh:hs, 0:wh]
    out[:, hh:H, wh:W] = sr[3][:, hs - H + hh:hs, ws - W + wh:ws]
    return out


def forward_chop(apply_fn: ApplyFn, lr: np.ndarray, *, scale: int, shave: int = 10,
                 min_size: int = 120000, multiple: int = 1, model_min_size: int = 1,
                 batch: int = 4, progress: bool = False) -> np.ndarray:
    """EDSR/NLSN/DLSN `forward_chop` on one HWC image. The official code always splits at
    least once and fails for images under ~24 x 32 LR px; those run whole instead."""
    h, w = lr.shape[:2]
    h_size, w_size = chop_sizes(h, w, shave)
    if h_size > h or w_size > w:
        logging.warning("chop: %dx%d image is too small to chop (official code fails); "
                        "running it whole", h, w)
        return run_batch(apply_fn, lr[None], scale=scale, multiple=multiple,
                         min_size=model_min_size)[0]

    def run_leaves(x):
        bar = _bar(progress, math.ceil(len(x) / max(batch, 1)), "chop")
        out = run_batch(apply_fn, x, scale=scale, multiple=multiple, min_size=model_min_size,
                        batch=batch, progress=bar)
        if bar is not None:
            bar.close()
        return out

    return _chop_level(run_leaves, np.asarray(lr, np.float32)[None], scale, shave,
                       min_size)[0]


# ---------------------------------------------------------------------------------------
# x8 self-ensemble (official order: bit 0 flips W, bit 1 flips H, bit 2 transposes)
# ---------------------------------------------------------------------------------------

def dihedral(x: np.ndarray, i: int) -> np.ndarray:
    """Transform i of HWC `x` as EDSR's forward_x8 builds it (v, then h, then t)."""
    if i & 1:
        x = x[:, ::-1]
    if i & 2:
        x = x[::-1]
    if i & 4:
        x = x.transpose(1, 0, 2)
    return np.ascontiguousarray(x)


def dihedral_inverse(x: np.ndarray, i: int) -> np.ndarray:
    if i & 4:
        x = x.transpose(1, 0, 2)
    if i & 2:
        x = x[::-1]
    if i & 1:
        x = x[:, ::-1]
    return np.ascontiguousarray(x)


def forward_x8(forward: Callable[[np.ndarray], np.ndarray], lr: np.ndarray,
                  progress: bool = False) -> np.ndarray:
    """Mean of the 8 un-transformed outputs of `forward` on the dihedral transforms."""
    bar = _bar(progress, 8, "x8")
    outs = []
    for i in range(8):
        outs.append(dihedral_inverse(forward(dihedral(lr, i)), i))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return np.mean(np.stack(outs), axis=0, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# Memory-aware planning and the entry point
# ---------------------------------------------------------------------------------------

def _mib(b):
    return f"{b / 2**20:.0f} MiB"


def choose_tile(apply_fn: ApplyFn, shape_hwc, *, budget: int, tile_overlap: int,
                multiple: int, min_size: int, tile_batch: int, est_whole: int):
    """Largest square tile (and batch <= tile_batch) whose compiled forward fits `budget`,
    starting from the area ratio and checking each candidate's memory analysis."""
    ph, pw = (padded_size(s, multiple, min_size) for s in shape_hwc[:2])
    tile = int(math.sqrt(ph * pw * budget / max(est_whole, 1)))
    tile = min(tile, max(ph, pw))
    smallest = padded_size(max(tile_overlap + 8, 16), multiple, min_size)
    while True:
        t = max(padded_size(tile, multiple, min_size), smallest)
        batch = tile_batch
        while batch >= 1:
            shape = (batch, min(t, ph), min(t, pw), shape_hwc[2])
            est = forward_memory_bytes(apply_fn, shape)
            if est <= budget:
                return t, batch, est
            batch //= 2
        if t <= smallest:
            raise MemoryError(f"even a {t}x{t} tile needs {_mib(est)} > budget {_mib(budget)};"
                              " lower tile_overlap or raise max_memory")
        tile = t * 3 // 4


def super_resolve(apply_fn: ApplyFn, lr: np.ndarray, *, scale: int, multiple: int = 1,
                  min_size: int = 1, tile: int = 0, tile_overlap: int = 32,
                  chop: bool = False, self_ensemble: bool = False,
                  max_memory: Optional[int] = None, tile_batch: int = 4,
                  progress: bool = False, info: Optional[dict] = None) -> np.ndarray:
    """HxWxC float32 LR in [0, 1] -> (scale*H)x(scale*W)xC float32 SR (not clamped).

    `apply_fn(lr_nhwc) -> sr_nhwc` (see `bind`); `multiple`/`min_size`: the model's input
    requirements (`jaxsr.models.input_multiple/min_input_size`). Whole-image unless `tile`
    > 0 or `chop`, or the whole image's estimated peak memory exceeds `max_memory` bytes
    (default: the device's free memory), in which case tiles are chosen automatically.
    `info`, if a dict, receives the mode used, the tile, and the memory estimates (and
    then automatic tiling is not logged: the caller reports it).
    """
    lr = np.asarray(lr)
    if lr.ndim != 3 or not np.issubdtype(lr.dtype, np.floating):
        raise TypeError(f"lr must be an HxWxC float array in [0, 1], got {lr.dtype} "
                        f"{lr.shape}")
    lr = lr.astype(np.float32)
    report, info = info is not None, ({} if info is None else info)
    if chop:
        info.update(mode="chop")
        fwd = lambda x: forward_chop(apply_fn, x, scale=scale, multiple=multiple,
                                     model_min_size=min_size, batch=tile_batch,
                                     progress=progress)
    else:
        if tile <= 0:
            tile = _auto_tile(apply_fn, lr.shape, multiple=multiple, min_size=min_size,
                              tile_overlap=tile_overlap, max_memory=max_memory,
                              tile_batch=tile_batch, info=info, report=report)
            tile_batch = info.get("tile_batch", tile_batch)
        else:
            info.update(mode="tiled", tile=tile, tile_batch=tile_batch)
        if tile <= 0:
            fwd = lambda x: run_batch(apply_fn, x[None], scale=scale, multiple=multiple,
                                      min_size=min_size)[0]
        else:
            fwd = lambda x: forward_tiled(apply_fn, x, scale=scale, tile=tile,
                                          tile_overlap=tile_overlap, multiple=multiple,
                                          min_size=min_size, tile_batch=tile_batch,
                                          progress=progress)
    if self_ensemble:
        info["self_ensemble"] = True
        return forward_x8(fwd, lr, progress=progress)
    return fwd(lr)


def _auto_tile(apply_fn, shape_hwc, *, multiple, min_size, tile_overlap, max_memory,
               tile_batch, info, report) -> int:
    """0 (whole image) when the compiled whole-image forward fits, else a tile size."""
    ph, pw = (padded_size(s, multiple, min_size) for s in shape_hwc[:2])
    est = forward_memory_bytes(apply_fn, (1, ph, pw, shape_hwc[2]))
    budget = max_memory if max_memory else available_memory_bytes(device_of(apply_fn))
    info.update(mode="whole", estimated_bytes=est, budget_bytes=budget)
    if not budget or est <= budget:
        return 0
    tile, batch, est_tile = choose_tile(
        apply_fn, shape_hwc, budget=budget, tile_overlap=tile_overlap, multiple=multiple,
        min_size=min_size, tile_batch=tile_batch, est_whole=est)
    if not report:  # a caller that passes `info` reports it itself
        logging.warning("whole %dx%d image needs ~%s > %s: tiling automatically (tile %d, "
                        "batch %d, ~%s)", shape_hwc[0], shape_hwc[1], _mib(est),
                        _mib(budget), tile, batch, _mib(est_tile))
    info.update(mode="auto-tiled", tile=tile, tile_batch=batch, tile_estimated_bytes=est_tile)
    return tile
