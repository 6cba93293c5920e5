"""LNLN (Wang et al., ICASSP 2021): lightweight non-local network, ~2.04M parameters.

  python -m jaxsr.main --config configs/lnln.py --workdir workdirs/lnln_x2
  python -m jaxsr.main --config configs/lnln.py:x4 --workdir workdirs/lnln_x4
  python -m jaxsr.main --config configs/lnln.py:x4 --workdir workdirs/lnln_x4 --mode evaluate
  python -m jaxsr.main --config configs/lnln.py:small --workdir workdirs/lnln_small   # 2-core CPU
Paper training (section 3.1): DIV2K 800 HR, bicubic LR, random 90/180/270 rotations and
flips (dihedral augmentation), L1, Adam 1e-4 (beta 0.9/0.99, eps 1e-8), halved every 200
epochs. Not stated, taken from RCAN/DRCA's code base: LR patch 48, batch 16, an epoch of
1000 iterations (so 200 epochs = 200k steps) and 1000 epochs in all. The architecture
choices the paper leaves open are listed in jaxsr/models/lnln.py.
Args (comma-separated): x2 (default) | x3 | x4, and small.
"""
from jaxsr.config_base import base_config, parse_args, scale_arg, small_cpu_training

LR_PATCH = 48


def get_config(arg=None):
    tokens = parse_args(arg, ("x2", "x3", "x4", "small"), "configs/lnln.py")
    c = base_config()
    c.scale = scale_arg(tokens)
    c.model.name = "lnln"
    c.model.init = "torch"       # PyTorch defaults (no official code; W starts at 0)
    c.model.n_feats = 64
    c.model.n_groups = 5
    c.model.n_blocks = 37          # fitted to the paper's LRG 0.38M / total 2.04M
    c.model.reduction = 16         # channel attention
    c.model.nl_reduction = 2       # non-local embedding width C/2
    c.degradation.name = "bicubic"
    c.data.train_dirs = ("data/DIV2K/DIV2K_train_HR",)
    c.data.augment = True
    c.train.loss = "l1"
    c.train.batch_size = 16
    c.train.patch_size = c.get_ref("scale") * LR_PATCH   # follows --config.scale
    c.train.num_steps = 1_000_000
    c.train.lr = 1e-4
    c.train.b1, c.train.b2, c.train.eps = 0.9, 0.99, 1e-8
    c.train.lr_halve_every = 200_000
    c.train.checkpoint_every = 5000
    c.train.log_every = 100
    if "small" in tokens:
        # 2 groups of 2 blocks, 16 channels, LR 24x24: a few minutes on 2 CPU cores.
        c.model.n_feats, c.model.n_groups, c.model.n_blocks, c.model.reduction = 16, 2, 2, 4
        small_cpu_training(c, lr_patch=24, num_steps=600, lr=5e-4, milestones=(400,),
                           checkpoint_every=200, log_every=20)
    return c
