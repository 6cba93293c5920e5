"""EDSR (Lim et al. 2017), trained as in EDSR-PyTorch, with the MATLAB-bicubic protocol.

  python -m jaxsr.main --config configs/edsr.py --workdir workdirs/edsr_x2
  python -m jaxsr.main --config configs/edsr.py --workdir workdirs/edsr_x2 --mode evaluate
Data as EDSR-PyTorch: DIV2K_train_HR with DIV2K_train_LR_bicubic/X{scale} (paired by name;
`--config.data.train_lr_dirs="()"` synthesises the LR on the device instead).
Args (`configs/edsr.py:ARG`): '' baseline (16 blocks, 64 ch, 1.37M params at x2);
'large' (32 blocks, 256 ch, res_scale 0.1); 'small' a 2-core CPU model; 'demo' the
`make demo` job (small model on the photos embedded in scikit-image, validated every 500
steps on the held-out photos, EMA weights, evaluated against bicubic).
"""
from jaxsr.config_base import base_config, gla_plugin_fields, small_cpu_training


def get_config(arg=None):
    c = base_config()
    c.model.name = "edsr"
    c.model.init = "torch"       # as EDSR-PyTorch (PyTorch defaults)
    c.model.n_resblocks = 16
    c.model.n_feats = 64
    c.model.res_scale = 1.0
    # GLA plug-in (DLSN 4.3.3; jaxsr.models.plugin): 'gla' adds GLA blocks after
    # `attention_positions` ResBlocks (empty: n_resblocks // 2).
    gla_plugin_fields(c, False)
    c.data.train_dirs = ("data/DIV2K/DIV2K_train_HR",)
    # The official LR: DIV2K's MATLAB-bicubic files (X2/0001x2.png), cropped with the HR as
    # EDSR's get_patch (docs/training.md, "Reproduce the paper: data").
    c.data.train_lr_dirs = ("data/DIV2K/DIV2K_train_LR_bicubic/X{scale}",)
    c.train.batch_size = 16
    c.train.patch_size = 96                # LR 48x48 at x2, as EDSR
    c.train.num_steps = 300_000
    c.train.lr = 1e-4
    c.train.lr_halve_every = 200_000
    c.train.checkpoint_every = 5000
    c.train.log_every = 100
    if arg == "large":
        c.model.n_resblocks, c.model.n_feats, c.model.res_scale = 32, 256, 0.1
    elif arg in ("small", "demo"):
        c.model.n_resblocks, c.model.n_feats = 4, 32
        small_cpu_training(c, lr_patch=32, num_steps=2000, lr=5e-4, milestones=(1400,),
                           checkpoint_every=500, log_every=50)
    if arg == "demo":
        c.data.source = "skimage"
        c.eval.datasets = ("skimage_val",)
        c.train.eval_every = 500
        c.train.eval_datasets = ("skimage_val",)
        # The EMA starts as a copy of the initial params (BasicSR): after 2000 steps 0.999
        # still holds 0.999^2000 = 13.5% of the random init and lags (docs/training.md).
        c.train.ema_decay = 0.99
    elif arg not in (None, "", "large", "small"):
        raise ValueError(f"configs/edsr.py: unknown arg {arg!r} (use large, small or demo)")
    return c
