"""RCAN (Zhang et al., ECCV 2018): 10 residual groups x 20 RCABs, 64 features, CA r=16.

  python -m jaxsr.main --config configs/rcan.py --workdir workdirs/rcan_x2
  python -m jaxsr.main --config configs/rcan.py:gla --workdir workdirs/rcan_gla_x2
  python -m jaxsr.main --config configs/rcan.py:small --workdir workdirs/rcan_small  # 2-core CPU
Paper training: LR patches 48x48, batch 16, Adam 1e-4 (0.9/0.999, eps 1e-8), L1, lr halved
every 200k iterations (`--decay 200`); the x3/x4 models start from x2 (here:
`--config.init_from=workdirs/rcan_x2`, the tail is re-initialised). The official code works
on 0-255 (rgb_range 255); this project uses [0, 1], which only rescales the mean shift.
Args (comma-separated): x2 (default) | x3 | x4; gla (DLSN's GLA plug-in after
`config.model.attention_positions` groups, default 5); small.
"""
from jaxsr.config_base import (base_config, gla_plugin_fields, parse_args, scale_arg,
                               small_cpu_training)


def get_config(arg=None):
    tokens = parse_args(arg, ("x2", "x3", "x4", "gla", "small"), "configs/rcan.py")
    c = base_config()
    c.scale = scale_arg(tokens)
    c.model.name = "rcan"
    c.model.init = "torch"       # as RCAN-PyTorch (PyTorch defaults)
    c.model.n_resgroups = 10
    c.model.n_resblocks = 20
    c.model.n_feats = 64
    c.model.reduction = 16                    # channel attention
    gla_plugin_fields(c, "gla" in tokens)   # default GLA position: n_resgroups // 2
    c.data.train_dirs = ("data/DIV2K/DIV2K_train_HR",)
    c.train.batch_size = 16
    c.train.patch_size = c.get_ref("scale") * 48
    c.train.num_steps = 1_000_000
    c.train.lr = 1e-4
    c.train.lr_halve_every = 200_000
    c.train.checkpoint_every = 5000
    c.train.log_every = 100
    if "small" in tokens:
        # 2 groups x 2 RCABs, 32 ch (CA reduction 8), LR 32x32.
        c.model.n_resgroups, c.model.n_resblocks, c.model.n_feats = 2, 2, 32
        c.model.reduction = 8
        c.model.chunk_size, c.model.n_hashes = 64, 2
        small_cpu_training(c, lr_patch=32, num_steps=600, lr=5e-4, milestones=(400,),
                           checkpoint_every=200, log_every=20)
    return c
