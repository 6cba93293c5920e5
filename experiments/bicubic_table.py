"""Bicubic baseline table (Set5, Set14, B100, Urban100 at x2/x3/x4) with jaxsr's protocol.

  .venv/bin/python experiments/bicubic_table.py [--benchmarks_dir ../shared/data/benchmarks]
      [--datasets Set5 Set14] [--scales 2 4] [--round_y]

LR = the shipped `LR_bicubic` files where they exist (Set5, Set14), else MATLAB bicubic
of the modcropped HR (`imresize_np`); SR = the `bicubic` model (configs/bicubic.py, JAX,
MATLAB uint8 semantics) quantised to uint8; PSNR/SSIM on Y with crop_border = scale;
grayscale HR files (Set14 bridge) are scored on their single channel. Prints a markdown
table with the reference values of ../shared/data/README.md and the published rows.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsr import config_util, evaluate  # noqa: E402

# ../shared/data/README.md (computed there) and EDSR/RCAN papers: (psnr, ssim) per x2/x3/x4.
REFERENCE = {
    "Set5": [(33.67, .9303), (30.40, .8689), (28.43, .8111)],
    "Set14": [(30.23, .8691), (27.54, .7745), (25.99, .7029)],
    "B100": [(29.56, .8434), (27.21, .7391), (25.96, .6681)],
    "Urban100": [(26.88, .8405), (24.46, .7352), (23.14, .6581)],
}
PUBLISHED = {
    "Set5": [(33.66, .9299), (30.39, .8682), (28.42, .8104)],
    "Set14": [(30.24, .8688), (27.55, .7742), (26.00, .7027)],
    "B100": [(29.56, .8431), (27.21, .7385), (25.96, .6675)],
    "Urban100": [(26.88, .8403), (24.46, .7349), (23.14, .6577)],
}


def score_set(benchmarks_dir: str, name: str, scale: int, round_y: bool = False):
    """Mean (psnr, ssim) of `configs/bicubic.py` over one set, through evaluate mode's code."""
    here = os.path.dirname(os.path.abspath(__file__))
    config = config_util.load_config_file(os.path.join(here, "..", "configs", "bicubic.py"))
    config.scale, config.eval.benchmarks_dir, config.eval.round_y = scale, benchmarks_dir, round_y
    model, params = evaluate.load_model_params(config, "")
    result = evaluate.evaluate_set(config, evaluate.make_apply_fn(model, params), name)
    return result["psnr_y"], result["ssim_y"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--benchmarks_dir",
                    default=os.path.join(here, "..", "..", "shared", "data", "benchmarks"))
    ap.add_argument("--datasets", nargs="+", default=list(REFERENCE))
    ap.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4])
    ap.add_argument("--round_y", action="store_true", help="round Y (KAIR/MATLAB style)")
    args = ap.parse_args(argv)
    t0 = time.time()
    print(f"| set | scale | PSNR / SSIM (jaxsr) | data/README | published | dPSNR vs README |")
    print("|---|---|---|---|---|---|")
    for name in args.datasets:
        for s in args.scales:
            p, q = score_set(args.benchmarks_dir, name, s, args.round_y)
            ref = REFERENCE.get(name, [None] * 3)[s - 2] if 2 <= s <= 4 else None
            pub = PUBLISHED.get(name, [None] * 3)[s - 2] if 2 <= s <= 4 else None
            fmt = lambda r: f"{r[0]:.2f} / {r[1]:.4f}" if r else "-"
            d = f"{p - ref[0]:+.3f}" if ref else "-"
            print(f"| {name} | x{s} | {p:.4f} / {q:.5f} | {fmt(ref)} | {fmt(pub)} | {d} |",
                  flush=True)
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
