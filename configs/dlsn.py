"""DLSN (Su et al., TPAMI 2022): 10 GLAFFMs x 4 LFFBs, 256 features, GLA (K=128, 3 rounds).

  python -m jaxsr.main --config configs/dlsn.py --workdir workdirs/dlsn_x2
  python -m jaxsr.main --config configs/dlsn.py:x3 --workdir workdirs/dlsn_x3   # from x2:
      # config.init_from=workdirs/dlsn_x2 is preset; the log lists the re-initialised
      # upsampler tensors (x3: tail_0/layers_0; x4: tail_0/layers_2)
  python -m jaxsr.main --config configs/dlsn.py:x4,c128 --workdir workdirs/dlsn128_x4
  python -m jaxsr.main --config configs/dlsn.py:small --workdir workdirs/dlsn_small  # 2-core CPU
Data as the official code (EDSR-PyTorch framework): DIV2K_train_HR/0001.png ... 0800.png
with DIV2K_train_LR_bicubic/X2/0001x2.png ... (X3, X4 follow --config.scale), paired by
name; other locations:
  python -m jaxsr.main --config configs/dlsn.py --workdir workdirs/dlsn_x2 \
    --config.data.train_dirs="('/data/DIV2K/DIV2K_train_HR',)" \
    --config.data.train_lr_dirs="('/data/DIV2K/DIV2K_train_LR_bicubic/X{scale}',)"
(`--config.data.train_lr_dirs="()"` synthesises the LR on the device instead.)
README training: x2 from scratch, LR patches 48x48, batch 16, Adam 1e-4 (0.9/0.999), L1,
1.5M iterations, lr halved at 300k/600k/900k/1.2M (`--decay 300-600-900-1200 --epochs
1500`). x3 (and x4, whose command the repo does not give) start from the x2 model
(config.init_from = the x2 workdir; the tail is re-initialised) and train 200k
iterations with halvings at 50k/100k/150k (`--decay 50-100-150-200 --epochs 200`).
Test with chop. The GLA `fc` fixes chunk_size for a checkpoint; n_hashes may change.
Batch 16 on a device that cannot hold it: --config.train.grad_accum_steps=2 (or 4); on
other device counts see docs/training.md ("Batch over chips").
Args (comma-separated): x2 (default) | x3 | x4; c128 (the paper's 18.27M variant,
128 features); small.
"""
from jaxsr.config_base import base_config, parse_args, scale_arg, small_cpu_training

LR_PATCH = 48


def get_config(arg=None):
    tokens = parse_args(arg, ("x2", "x3", "x4", "c128", "small"), "configs/dlsn.py")
    c = base_config()
    c.scale = scale_arg(tokens)
    c.model.name = "dlsn"
    c.model.init = "torch"       # as the official code (EDSR framework: PyTorch defaults)
    c.model.n_resgroups = 10
    c.model.n_resblocks = 4
    c.model.n_feats = 128 if "c128" in tokens else 256
    c.model.res_scale = 0.1
    c.model.chunk_size = 128
    c.model.n_hashes = 3
    c.model.reduction = 4
    c.data.train_dirs = ("data/DIV2K/DIV2K_train_HR",)
    # The official LR: DIV2K's MATLAB-bicubic files (X2/0001x2.png), cropped with the HR as
    # EDSR's get_patch (docs/training.md, "Reproduce the paper: data").
    c.data.train_lr_dirs = ("data/DIV2K/DIV2K_train_LR_bicubic/X{scale}",)
    c.train.batch_size = 16
    c.train.patch_size = c.get_ref("scale") * LR_PATCH   # follows --config.scale
    c.train.lr = 1e-4
    c.train.checkpoint_every = 5000
    c.train.log_every = 100
    c.eval.chop = True
    if c.scale == 2:
        c.train.num_steps = 1_500_000
        c.train.lr_milestones = (300_000, 600_000, 900_000, 1_200_000)
    else:
        c.init_from = "workdirs/dlsn128_x2" if "c128" in tokens else "workdirs/dlsn_x2"
        c.train.num_steps = 200_000
        c.train.lr_milestones = (50_000, 100_000, 150_000)
    if "small" in tokens:
        # 2 GLAFFMs x 2 LFFBs, 32 ch, K=32, 2 rounds, LR 24x24; trains from scratch.
        c.model.n_resgroups, c.model.n_resblocks, c.model.n_feats = 2, 2, 32
        c.model.chunk_size, c.model.n_hashes = 32, 2
        c.init_from = ""
        # ~5 steps/s on 2 CPU cores: about 5 minutes
        small_cpu_training(c, lr_patch=24, num_steps=1500, lr=5e-4, milestones=(1000,),
                           checkpoint_every=500, log_every=50)
        c.eval.chop = False
    return c
