"""Per-chip evaluation forward of the largest image of a benchmark set, for a TPU target,
on `--mode compile`'s terms (jaxsr.aot: the compiled `inference.BoundApply`, XLA's memory
and cost analyses, the roofline) but at the image's own LR shape instead of a square.

Evaluation runs one image per chip at its exact (padded) shape (jaxsr.eval_engine), so
one chip's forward of the largest image bounds a set's slowest image.

  python experiments/eval_forward_largest.py --config configs/dlsn.py --set Urban100 \
      --target v5e:1x1 --out experiments/results/eval_forward_urban100_dlsn_x2_v5e.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402


def largest_lr_shape(benchmarks_dir: str, set_name: str, scale: int) -> tuple:
    from PIL import Image
    from jaxsr.data import images
    sizes = []
    for p in images.list_images(os.path.join(benchmarks_dir, set_name, "HR")):
        with Image.open(p) as im:
            w, h = im.size
        sizes.append((h // scale, w // scale, os.path.basename(p)))
    return max(sizes, key=lambda s: s[0] * s[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/dlsn.py")
    ap.add_argument("--set", default="Urban100")
    ap.add_argument("--target", default="v5e:1x1")
    ap.add_argument("--benchmarks_dir", default="../shared/data/benchmarks")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from jaxsr import aot
    aot.prepare_host(args.target)
    import jax
    import jax.numpy as jnp
    from jaxsr import accelerators, config_util, inference, models, precision, train
    from jaxsr import objectives, target_platform
    config = config_util.load_config_file(args.config)
    h, w, name = largest_lr_shape(args.benchmarks_dir, args.set, int(config.scale))
    mult, min_size = models.input_multiple(config), models.min_input_size(config)
    shape = (1, inference.padded_size(h, mult, min_size),
             inference.padded_size(w, mult, min_size), 3)
    target = accelerators.parse_target(args.target)
    devices = aot.target_devices(target)[:1]          # one chip: one image
    with target_platform.tracing_for(target.platform):
        repl, data_sharding = train.shardings(devices)
        objective = objectives.make(config, aot.build_model(config))
        params = aot.abstract_state(objective, config, repl)["params"]

        def build():
            bound = inference.BoundApply(aot.build_model(config), params,
                                         precision.compute_dtype(config))
            x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=data_sharding)
            return bound.lower(x).compile()

        report = aot.compile_and_report("eval_forward", build, target, config)
    result = {"command": " ".join(sys.argv), "set": args.set, "image": name,
              "lr_hw": [h, w], "padded_shape": list(shape), "scale": int(config.scale),
              "model": config.model.name, "target": aot.target_describe(target, devices),
              "eval_forward": report}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    common.write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("image", "lr_hw", "padded_shape")}),
          json.dumps(report.get("roofline", {})), report.get("compile_seconds"))


if __name__ == "__main__":
    main()
