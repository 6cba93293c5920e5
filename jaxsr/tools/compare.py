"""Side-by-side figure: LR (nearest) | bicubic | model | HR on a crop of one image.

    python -m jaxsr.tools.compare --workdir workdirs/demo \\
        --image ../shared/data/benchmarks/Urban100/HR/img_004.png --output compare.png
    python -m jaxsr.tools.compare --workdir bicubic --config.scale=4 --image ... --output ...

The HR image is modcropped and downscaled with MATLAB bicubic (as the benchmark LR sets)
and every panel shows the same HR-sized crop, titled with the PSNR on the Y channel of that
crop. Without `--crop` the model runs on the whole image and the window where it gains most
over bicubic is shown (for the bicubic "model": where bicubic is worst); with `--crop y,x`
it runs on an LR window with `--context` LR pixels of surroundings (-1: the whole image).
An overview of the whole image with the crop outlined comes first.
"""
import argparse
import os
import sys

import numpy as np

from jaxsr import fileio, metrics, upscale
from jaxsr.data.images import modcrop, read_rgb
from jaxsr.ops.imresize import imresize_np


def best_window(score: np.ndarray, size: int, scale: int):
    """Top-left (y, x), on a grid of scale-aligned steps, of the size x size window with
    the largest summed `score` (HxW)."""
    integral = np.pad(score.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(scale, (size // 4) // scale * scale)
    ys = np.arange(0, score.shape[0] - size + 1, step)
    xs = np.arange(0, score.shape[1] - size + 1, step)
    Y, X = np.meshgrid(ys, xs, indexing="ij")
    sums = (integral[Y + size, X + size] - integral[Y, X + size]
            - integral[Y + size, X] + integral[Y, X])
    i, j = np.unravel_index(np.argmax(sums), sums.shape)
    return int(ys[i]), int(xs[j])


def _sq_err(a, b):
    return ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=2)


def panels(up, hr: np.ndarray, crop, size: int, context: int):
    """[(title, HR-sized uint8 crop)], the HR crop box and the modcropped HR. Without
    `crop`, the model runs on the whole image and the window where it gains most over
    bicubic is chosen (where bicubic is worst, for a model equal to bicubic)."""
    s = up.scale
    hr = modcrop(hr, s)
    size = min(size - size % s, hr.shape[0] - hr.shape[0] % s, hr.shape[1] - hr.shape[1] % s)
    lr = imresize_np(hr, 1.0 / s)
    bic = imresize_np(lr, float(s))
    whole = up(lr) if crop is None or context < 0 else None
    if crop is None:
        gain = _sq_err(bic, hr) - _sq_err(whole, hr)
        crop = best_window(gain if gain.max() > 0 else _sq_err(bic, hr), size, s)
    y, x = crop
    y, x = min(y - y % s, hr.shape[0] - size), min(x - x % s, hr.shape[1] - size)
    ly, lx, ls = y // s, x // s, size // s
    if whole is not None:
        sr, oy, ox = whole, 0, 0
    else:  # only the crop's surroundings: quicker for big models on a CPU
        oy, ox = max(ly - context, 0), max(lx - context, 0)
        sr = up(lr[oy:ly + ls + context, ox:lx + ls + context])
    hr_crop = hr[y:y + size, x:x + size]
    name = up.config.model.name
    items = [(f"LR x{s} (nearest)", np.repeat(np.repeat(lr[ly:ly + ls, lx:lx + ls], s, 0), s, 1)),
             ("bicubic", bic[y:y + size, x:x + size]),
             (name if name != "bicubic" else "bicubic (model)",
              sr[(ly - oy) * s:(ly - oy + ls) * s, (lx - ox) * s:(lx - ox + ls) * s]),
             ("HR", hr_crop)]
    titled = []
    for title, img in items:
        if title != "HR":
            psnr = metrics.calculate_psnr(img, hr_crop, crop_border=0, test_y_channel=True)
            title = f"{title}\n{psnr:.2f} dB"
        titled.append((title, img))
    return titled, (y, x, size), hr


def figure(titled, box, hr, path: str, title: str = "", overwrite: bool = True) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    n = len(titled) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.9))
    axes[0].imshow(hr)
    y, x, size = box
    axes[0].add_patch(Rectangle((x, y), size, size, fill=False, edgecolor="red", lw=1.5))
    axes[0].set_title("image (crop in red)", fontsize=10)
    for ax, (t, img) in zip(axes[1:], titled):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(t, fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with fileio.atomic_path(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides, rest = upscale.split_overrides(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="trained workdir, or 'bicubic'")
    p.add_argument("--image", required=True, help="HR image (e.g. an Urban100 HR file)")
    p.add_argument("--output", default="compare.png")
    p.add_argument("--crop", default="", help="y,x of the HR crop (default: auto)")
    p.add_argument("--size", type=int, default=96, help="HR crop side")
    p.add_argument("--context", type=int, default=24, help="LR px around the crop (-1: all)")
    p.add_argument("--chop", action="store_true")
    p.add_argument("--self_ensemble", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = p.parse_args(rest)
    try:
        if not args.overwrite:
            fileio.refuse_existing(args.output)
        up = upscale.Upscaler.from_workdir(args.workdir, overrides, chop=args.chop,
                                           self_ensemble=args.self_ensemble)
        hr = read_rgb(args.image)
        crop = tuple(int(v) for v in args.crop.split(",")) if args.crop else None
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    titled, box, hr = panels(up, hr, crop, args.size, args.context)
    where = f"{os.path.basename(args.image)}, crop y={box[0]} x={box[1]} size={box[2]}"
    figure(titled, box, hr, args.output, title=f"x{up.scale} {where}; PSNR on Y of the crop",
           overwrite=args.overwrite)
    print(f"wrote {args.output} ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
