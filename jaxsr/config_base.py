"""The fields every `configs/*.py` shares; each config file starts from `base_config()`.

Field names here are an interface: tools (`jaxsr.main`, `jaxsr.upscale`, `jaxsr.convert`,
experiments/) read them, and `--config.a.b=v` overrides them on the command line.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.scale = 2
    c.init_from = ""          # workdir or checkpoint dir whose matching params initialise the model

    c.model = ml_collections.ConfigDict()
    c.model.name = "edsr"

    c.train = ml_collections.ConfigDict()
    c.train.objective = "sr"      # jaxsr.objectives.<name>
    c.train.num_steps = 1000
    c.train.batch_size = 16
    c.train.patch_size = 96       # HR side of the training crop
    c.train.lr = 1e-4
    c.train.b1 = 0.9
    c.train.b2 = 0.999
    c.train.eps = 1e-8
    c.train.lr_milestones = ()    # steps at which lr is multiplied by lr_gamma
    c.train.lr_halve_every = 0    # >0: halve every N steps (ignored when milestones given)
    c.train.lr_gamma = 0.5
    c.train.loss = "l1"
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.log_every = 50
    c.train.async_checkpoints = True

    c.data = ml_collections.ConfigDict()
    c.data.source = "folders"     # 'folders' | 'skimage' (embedded demo photos) | 'tfds'
    c.data.train_dirs = ()        # HR image folders (PNG/JPEG)
    c.data.num_workers = 0        # grain worker processes (0: threads only)
    c.data.num_threads = 2
    c.data.crop = "random"        # 'random' | 'center_random' (NLCUnet: centre crop, then random)
    c.data.center_size = 512
    c.data.augment = True         # dihedral: h/v flips and transpose

    c.degradation = ml_collections.ConfigDict()
    c.degradation.name = "bicubic"  # how LR is synthesised from HR on device

    c.eval = ml_collections.ConfigDict()
    c.eval.benchmarks_dir = "../shared/data/benchmarks"
    c.eval.datasets = ("Set5", "Set14", "B100", "Urban100")
    c.eval.crop_border = -1       # -1: = scale
    c.eval.test_y_channel = True
    c.eval.round_y = False        # BasicSR/EDSR: Y not rounded; KAIR/MATLAB round it
    c.eval.use_lr_files = True    # use <Set>/LR_bicubic/X<s> when present
    c.eval.tile = 0
    c.eval.tile_overlap = 32
    c.eval.chop = False
    c.eval.self_ensemble = False
    c.eval.max_images = 0         # >0: only the first N images of each set (quick checks)
    c.eval.compare_bicubic = True # also score MATLAB bicubic on the same LR (table column)
    return c
