"""NLSN (Mei et al., CVPR 2021): 32 ResBlocks, 256 features, 5 NLSA (K=144, 4 rounds).

  python -m jaxsr.main --config configs/nlsn.py --workdir workdirs/nlsn_x2
  python -m jaxsr.main --config configs/nlsn.py:x3 --workdir workdirs/nlsn_x3
  python -m jaxsr.main --config configs/nlsn.py:x4 --config.init_from=workdirs/nlsn_x2 \
      --workdir workdirs/nlsn_x4   # from the x2 model (EDSR convention; the log lists the
                                   # re-initialised upsampler tensors)
  python -m jaxsr.main --config configs/nlsn.py --workdir workdirs/nlsn_x2 --mode evaluate
  python -m jaxsr.main --config configs/nlsn.py:small --workdir workdirs/nlsn_small   # 2-core CPU
Data as the official code (EDSR-PyTorch framework): DIV2K_train_HR/0001.png ... 0800.png
with DIV2K_train_LR_bicubic/X2/0001x2.png ..., paired by name; other locations:
  python -m jaxsr.main --config configs/nlsn.py --workdir workdirs/nlsn_x2 \
    --config.data.train_dirs="('/data/DIV2K/DIV2K_train_HR',)" \
    --config.data.train_lr_dirs="('/data/DIV2K/DIV2K_train_LR_bicubic/X{scale}',)"
(`--config.data.train_lr_dirs="()"` synthesises the LR on the device instead.)
Paper/README training: LR patches 48x48 (HR 48*scale), batch 16, Adam 1e-4
(0.9/0.999, eps 1e-8), L1, 1M iterations, lr halved every 200k (official
`--decay 200-400-600-800 --epochs 1000`, 1000 iterations per epoch). Test with chop, as
the official test command (`--chop`). The number of rounds and the chunk size carry no
parameters: `--config.model.n_hashes=1 --config.model.chunk_size=256` at evaluation.
Batch 16 on a device that cannot hold it: --config.train.grad_accum_steps=2 (or 4); on
other device counts see docs/training.md ("Batch over chips").
Args (comma-separated): x2 (default) | x3 | x4, and small.
"""
from jaxsr.config_base import base_config, parse_args, scale_arg, small_cpu_training

LR_PATCH = 48


def get_config(arg=None):
    tokens = parse_args(arg, ("x2", "x3", "x4", "small"), "configs/nlsn.py")
    c = base_config()
    c.scale = scale_arg(tokens)
    c.model.name = "nlsn"
    c.model.init = "torch"       # as the official code (EDSR framework: PyTorch defaults)
    c.model.n_resblocks = 32
    c.model.n_feats = 256
    c.model.res_scale = 0.1
    c.model.chunk_size = 144
    c.model.n_hashes = 4
    c.model.reduction = 4
    c.model.attn_every = 8
    c.data.train_dirs = ("data/DIV2K/DIV2K_train_HR",)
    # The official LR: DIV2K's MATLAB-bicubic files (X2/0001x2.png), cropped with the HR as
    # EDSR's get_patch (docs/training.md, "Reproduce the paper: data").
    c.data.train_lr_dirs = ("data/DIV2K/DIV2K_train_LR_bicubic/X{scale}",)
    c.train.batch_size = 16
    c.train.patch_size = c.get_ref("scale") * LR_PATCH   # follows --config.scale
    c.train.num_steps = 1_000_000
    c.train.lr = 1e-4
    c.train.lr_milestones = (200_000, 400_000, 600_000, 800_000)
    c.train.checkpoint_every = 5000
    c.train.log_every = 100
    c.eval.chop = True
    if "small" in tokens:
        # 4 blocks, an NLSA every 2 (body_0/3/6), 32 ch, K=32, 2 rounds, LR 24x24.
        c.model.n_resblocks, c.model.attn_every, c.model.n_feats = 4, 2, 32
        c.model.chunk_size, c.model.n_hashes = 32, 2
        # ~5 steps/s on 2 CPU cores: about 5 minutes
        small_cpu_training(c, lr_patch=24, num_steps=1500, lr=5e-4, milestones=(1000,),
                           checkpoint_every=500, log_every=50)
        c.eval.chop = False
    return c
