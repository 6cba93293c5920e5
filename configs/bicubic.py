"""Bicubic baseline (MATLAB imresize, no parameters): evaluation only.

  python -m jaxsr.main --config configs/bicubic.py --workdir workdirs/bicubic_x2 --mode evaluate
  python -m jaxsr.main --config configs/bicubic.py:x4 --workdir workdirs/bicubic_x4 --mode evaluate
  python -m jaxsr.main --config configs/bicubic.py:x3,small --workdir workdirs/bicubic_small --mode evaluate
The full table for x2/x3/x4 on Set5/Set14/B100/Urban100: `python experiments/bicubic_table.py`.
Args (comma-separated): x2 (default) | x3 | x4; small (2 images per set, for a smoke run;
there is nothing to train).
"""
from jaxsr.config_base import base_config


def get_config(arg=None):
    tokens = [t for t in (arg or "").split(",") if t]
    unknown = [t for t in tokens if t not in ("x2", "x3", "x4", "small")]
    if unknown:
        raise ValueError(f"configs/bicubic.py: unknown arg(s) {unknown} (use x2|x3|x4, small)")
    c = base_config()
    c.scale = next((int(t[1]) for t in tokens if t[0] == "x"), 2)
    c.model.name = "bicubic"
    c.model.round_uint8 = True      # MATLAB on uint8 LR: round after each pass
    c.train.num_steps = 0
    c.eval.datasets = ("Set5", "Set14", "B100", "Urban100")
    if "small" in tokens:
        c.eval.max_images = 2
    return c
