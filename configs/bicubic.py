"""Bicubic baseline (MATLAB imresize, no parameters): evaluation only.

  python -m jaxsr.main --config configs/bicubic.py --workdir workdirs/bicubic_x2 --mode evaluate
  python -m jaxsr.main --config configs/bicubic.py:x4 --workdir workdirs/bicubic_x4 --mode evaluate
  python -m jaxsr.main --config configs/bicubic.py:x3,small --workdir workdirs/bicubic_small --mode evaluate
The full table for x2/x3/x4 on Set5/Set14/B100/Urban100: `python experiments/bicubic_table.py`.
Args (comma-separated): x2 (default) | x3 | x4; small (2 images per set, for a smoke run;
there is nothing to train).
"""
from jaxsr.config_base import base_config, parse_args, scale_arg


def get_config(arg=None):
    tokens = parse_args(arg, ("x2", "x3", "x4", "small"), "configs/bicubic.py")
    c = base_config()
    c.scale = scale_arg(tokens)
    c.model.name = "bicubic"
    c.model.round_uint8 = True      # MATLAB on uint8 LR: round after each pass
    c.train.num_steps = 0
    c.eval.datasets = ("Set5", "Set14", "B100", "Urban100")
    if "small" in tokens:
        c.eval.max_images = 2
    return c
