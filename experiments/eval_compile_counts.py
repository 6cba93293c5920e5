"""How many forwards evaluation compiles per benchmark set and scale: distinct padded LR
shapes on one device, and the most any one device compiles when jaxsr.eval_engine deals
the images over N devices (its own shapes only), for config.eval.pad_to = 0 (each image at
its own size, the default), 16 and 32. From the HR sizes alone (no model is run); model
multiple 1 (EDSR, NLSN, DLSN, RCAN).

  python experiments/eval_compile_counts.py --out experiments/results/eval_compile_counts.json
"""
import argparse
import os
import sys

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments import common  # noqa: E402

SETS = ("Set5", "Set14", "B100", "Urban100")
DEVICES = (1, 2, 8, 16, 32)


def lr_sizes(root: str, name: str, scale: int) -> list:
    from jaxsr.data import images
    out = []
    for p in images.list_images(os.path.join(root, name, "HR")):
        with Image.open(p) as im:
            w, h = im.size
        out.append((h // scale, w // scale))
    return out


def counts(sizes, pad_to: int) -> dict:
    from jaxsr import eval_engine, inference
    shapes = [tuple(inference.padded_size(n, max(pad_to, 1)) for n in s) for s in sizes]
    per_devices = {}
    for n in DEVICES:
        runs = eval_engine.deal([h * w for h, w in shapes], shapes, n)
        per_devices[n] = max(len({shapes[i] for i in run}) for run in runs)
    return {"images": len(shapes), "shapes": len(set(shapes)),
            "max_per_device": per_devices}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--benchmarks_dir", default=os.path.join(REPO, "..", "shared", "data",
                                                             "benchmarks"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    table = {f"{name} x{scale} pad_to={pad}": counts(lr_sizes(args.benchmarks_dir, name, scale),
                                                     pad)
             for name in SETS for scale in (2, 3, 4) for pad in (0, 16, 32)}
    common.write_json(args.out, {"command": " ".join(["python"] + sys.argv), "table": table})
    for k, v in table.items():
        print(f"{k:<28} images {v['images']:>4} shapes {v['shapes']:>3}  max per device "
              + " ".join(f"{n}:{m}" for n, m in v["max_per_device"].items()))


if __name__ == "__main__":
    main()
