"""The fields every `configs/*.py` shares; each config file starts from `base_config()`.

Field names here are an interface: tools (`jaxsr.main`, `jaxsr.upscale`, `jaxsr.convert`,
experiments/) read them, and `--config.a.b=v` overrides them on the command line.
"""
import importlib.util
import os

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.scale = 2
    c.init_from = ""          # workdir or checkpoint dir whose matching params initialise the model
    c.compile_cache_dir = ""  # persistent XLA cache (local or gs://): '' = <workdir>/compile_cache
                              # (or JAX_COMPILATION_CACHE_DIR), 'none' = off (jaxsr.compile_cache)

    c.model = ml_collections.ConfigDict()
    c.model.name = "edsr"
    c.model.init = "flax"         # 'flax': the modules' own initializers; 'torch': PyTorch's
                                  # defaults + the official code's explicit inits (models/init.py)
    c.model.attention_impl = "auto"  # LSH chunk attention: 'auto' | 'xla' | 'pallas' (NLSN, DLSN,
                                     # NLCUnet, the GLA plug-in; lsh.ATTENTION_IMPLS)
    c.model.scan_blocks = "auto"  # 'true' | 'false' | 'auto': repeated blocks as one nn.scan
                                  # (jaxsr.models.scan; checkpoints of either layout load)

    c.train = ml_collections.ConfigDict()
    c.train.objective = "sr"      # jaxsr.objectives.<name>
    c.train.num_steps = 1000
    c.train.batch_size = 16       # global batch per optimizer step (all devices, all micro-batches)
    c.train.per_device_batch_size = 0  # >0: batch_size = this x devices x grad_accum_steps
    c.train.grad_accum_steps = 1  # micro-batches per optimizer step, gradients averaged (scan)
    c.train.remat = "none"        # 'none' | 'blocks' | a jax.checkpoint_policies name: recompute
                                  # the repeated blocks in the backward pass (scan.REMAT_CHOICES)
    c.train.lr_scaling = "none"   # 'none' | 'linear' | 'sqrt': lr x (batch_size / lr_reference_batch)
    c.train.lr_reference_batch = 16   # the batch the config's lr belongs to (NLSN/DLSN/EDSR: 16)
    c.train.patch_size = 96       # HR side of the training crop
    c.train.lr = 1e-4
    c.train.b1 = 0.9
    c.train.b2 = 0.999
    c.train.eps = 1e-8
    c.train.lr_milestones = ()    # steps at which lr is multiplied by lr_gamma
    c.train.lr_halve_every = 0    # >0: halve every N steps (ignored when milestones given)
    c.train.lr_gamma = 0.5
    c.train.schedule = "step"     # 'constant' | 'step' (milestones / halve_every) | 'cosine'
                                  # | 'cosine_restarts' (BasicSR CosineAnnealingRestartLR)
    c.train.warmup_steps = 0      # linear warmup from 0 in front of any schedule
    c.train.min_lr = 0.0          # cosine: final lr (BasicSR eta_min)
    c.train.cosine_periods = ()   # cosine_restarts: period lengths in steps (BasicSR periods)
    c.train.restart_weights = ()  # cosine_restarts: lr weight at each restart (default all 1)
    c.train.grad_clip_norm = 0.0  # >0: optax.clip_by_global_norm
    c.train.weight_decay = 0.0    # >0: AdamW (decoupled weight decay)
    c.train.ema_decay = 0.0       # >0: keep an EMA of the params (BasicSR params_ema, 0.999)
    c.train.eval_every = 0        # >0: validate every N steps, keep the best checkpoint
    c.train.eval_datasets = ("Set5",)
    c.train.loss = "l1"
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.log_every = 50
    c.train.async_checkpoints = True
    # Step watchdog (jaxsr.watchdog.StepWatchdog): no step within watchdog_factor x the measured
    # step time (at least watchdog_min_s; watchdog_floor_s for compiles, validation, saves)
    # ends the run with a message and exit status 75. 0: off.
    c.train.watchdog_factor = 20.0
    c.train.watchdog_min_s = 60.0
    c.train.watchdog_floor_s = 900.0
    c.train.compute_dtype = "float32"  # 'bfloat16': convs/matmuls in bf16; params, optimizer,
                                       # softmax/logsumexp and the loss stay float32
    c.train.matmul_precision = "default"  # float32 convs/matmuls on TPU/GPU: 'default' (TPU:
                                          # 1 bf16 pass, GPU: TF32) | 'high' | 'highest'
                                          # (full float32; docs/precision.md)

    c.data = ml_collections.ConfigDict()
    c.data.source = "folders"     # 'folders' | 'skimage' (embedded demo photos) | 'tfds'
                                  # | 'array_record' (sub-images by jaxsr.tools.prepare)
    c.data.train_dirs = ()        # HR image folders (PNG/JPEG)
    c.data.train_lr_dirs = ()     # paired data: one LR folder per train_dirs entry ('{scale}'
                                  # -> config.scale); LR is then read, not synthesised
    c.data.lr_name_template = ""  # LR file stem from the HR stem, e.g. '{}_LR{scale}' ('':
                                  # '<stem>x<scale>' or '<stem>'; docs/data.md)
    c.data.prepared_dirs = ()     # source 'array_record': folders written by jaxsr.tools.prepare
    c.data.num_shards = 0         # data shards (0: one per JAX process); the global batch is
                                  # the same for any process count that divides it
    c.data.num_workers = 0        # grain worker processes (0: threads only)
    c.data.num_threads = 2
    c.data.crop = "random"        # 'random' | 'center_random' (NLCUnet: centre crop, then random)
    c.data.center_size = 512
    c.data.augment = True         # dihedral: h/v flips and transpose
    c.data.tfds_name = ""         # source 'tfds': prepared ArrayRecord dataset, e.g. 'div2k/bicubic_x2'
    c.data.tfds_data_dir = ""     # its TFDS data_dir ('' = TFDS default)
    c.data.tfds_split = "train"
    c.data.tfds_image_key = "hr"  # feature holding the HR image

    c.degradation = ml_collections.ConfigDict()
    c.degradation.name = "bicubic"  # how LR is synthesised from HR on device
    # Preset (jaxsr.data.degradations.PRESETS, docs/degradations.md): bicubic | bd | dn<level>
    # | nlcunet_iso | nlcunet_aniso | kenet | kair | custom. Each field below left at None
    # takes the preset's value; a value given here overrides it. Pixel units 0-255.
    ph = ml_collections.config_dict.placeholder
    c.degradation.kernel = ph(str)           # 'none' | 'iso' | 'aniso' Gaussian blur
    c.degradation.kernel_size = ph(int)      # odd
    c.degradation.sigma_min = ph(float)      # kernel width ~ U(sigma_min, sigma_max)
    c.degradation.sigma_max = ph(float)
    c.degradation.theta_min = ph(float)      # rotation (radians) ~ U(theta_min, theta_max)
    c.degradation.theta_max = ph(float)
    c.degradation.sample_variance = ph(bool)  # draw sigma^2 uniformly instead (KAIR)
    c.degradation.kernel_disturb = ph(float)  # taps * (1 + U(0, d)), DAN random_disturb 0.25
    c.degradation.kernel_shift = ph(str)     # 'none' | 'scale' | 'kair': mean -0.5 (sf - 1)
    c.degradation.kernel_dihedral = ph(bool)  # random flip/rotation of Gaussian kernels (KAIR)
    c.degradation.motion_prob = ph(float)   # share of random motion-blur kernels (KAIR 0.5)
    c.degradation.blur_padding = ph(str)     # 'reflect' | 'edge' | 'wrap' | 'symmetric'
    c.degradation.blur_mode = ph(str)        # 'correlate' | 'convolve' (kernel flipped)
    c.degradation.blur_quantize = ph(str)    # 'none' | 'round' | 'round_clip' | 'floor'
    c.degradation.blur_impl = ph(str)        # 'auto' (FFT on CPU) | 'fft' | 'direct'
    c.degradation.downsample = ph(str)       # 'bicubic' (MATLAB) | 'decimate' (upper-left)
    c.degradation.bicubic_round = ph(bool)   # MATLAB uint8: round after each resize pass
    c.degradation.noise_min = ph(float)      # AWGN std ~ U(noise_min, noise_max), 0-255
    c.degradation.noise_max = ph(float)
    c.degradation.noise_levels = ph(tuple)   # or drawn from these levels
    c.degradation.noise_zero_prob = ph(float)  # probability of no noise
    c.degradation.quantize = ph(str)         # final: 'none' | 'round' | 'round_clip'

    c.eval = ml_collections.ConfigDict()
    c.eval.benchmarks_dir = os.path.join(data_root(), "benchmarks")   # jaxsr.tools.data get
    c.eval.datasets = ("Set5", "Set14", "B100", "Urban100")
    c.eval.crop_border = -1       # -1: = scale
    c.eval.test_y_channel = True
    c.eval.round_y = False        # BasicSR/EDSR: Y not rounded; KAIR/MATLAB round it
    c.eval.gray = "gray"          # gray GT (Set14 bridge): 'gray' 1 channel, MATLAB | 'y' RGB on Y, EDSR/BasicSR
    c.eval.pad_to = 0             # >0: pad LR sides to multiples of it: fewer compiles, other borders
    c.eval.use_lr_files = True    # use <Set>/LR_bicubic/X<s> when present
    c.eval.blind_sets_dir = ""    # where make_lr --blind_set wrote blurred/noisy sets ('' = make on the fly)
    c.eval.tile = 0
    c.eval.tile_overlap = 32
    c.eval.chop = False
    c.eval.self_ensemble = False
    c.eval.max_images = 0         # >0: only the first N images of each set (quick checks)
    c.eval.compare_bicubic = True # also score MATLAB bicubic on the same LR (table column)
    c.eval.use_ema = True         # evaluate the EMA params when the checkpoint has them
    return c


# ---------------------------------------------------------------------------------------
# Helpers for the config files

SHARED_DATA = "../shared/data"      # the development machines' copy of the data


def data_root() -> str:
    """Where the default data paths point: $JAXSR_DATA, else ../shared/data when it exists
    (development machines, CI), else `data` (a fresh clone: where `python -m
    jaxsr.tools.data get benchmarks --out data` puts the sets)."""
    env = os.environ.get("JAXSR_DATA", "")
    if env:
        return env
    return SHARED_DATA if os.path.isdir(SHARED_DATA) else "data"


def small_train_dir() -> str:
    """The `:small` variants' training images (8 DIV2K validation HR images)."""
    return os.path.join(data_root(), "train", "DIV2K_valid_HR_subset")


def parse_args(arg, allowed, config_file: str, default: str = "") -> list[str]:
    """The comma-separated arg of `configs/X.py:x4,small` as a list; an unknown one fails
    with a message naming the config file and the valid args."""
    tokens = [t for t in (arg or default).split(",") if t]
    unknown = [t for t in tokens if t not in allowed]
    if unknown:
        raise ValueError(f"{config_file}: unknown arg(s) {unknown} (use {', '.join(allowed)})")
    return tokens


def scale_arg(tokens, default: int = 2) -> int:
    """The scale named by an 'x2' / 'x3' / 'x4' arg, else `default`."""
    return next((int(t[1:]) for t in tokens if t[:1] == "x" and t[1:].isdigit()), default)


def small_cpu_training(c, *, lr_patch: int, num_steps: int, lr: float, milestones,
                       checkpoint_every: int, log_every: int, datasets=("Set5", "Set14")):
    """The training of the `:small` variants: batch 8 of LR `lr_patch` crops from the
    DIV2K images of small_train_dir(), a few minutes on 2 CPU cores. Where those are
    absent (a fresh clone) the photos embedded in scikit-image stand in, so every `:small`
    config trains anywhere; the log says which images were used."""
    c.train.batch_size = 8
    c.train.patch_size = c.get_ref("scale") * lr_patch     # follows --config.scale
    c.train.num_steps = num_steps
    c.train.lr = lr
    c.train.lr_milestones = tuple(milestones)
    c.train.checkpoint_every = checkpoint_every
    c.train.log_every = log_every
    c.data.train_dirs = (small_train_dir(),)
    if not os.path.isdir(c.data.train_dirs[0]):
        c.data.source = "skimage"
    c.data.train_lr_dirs = ()           # no LR files there: synthesised on the device
    if datasets:
        c.eval.datasets = tuple(datasets)
    return c


def gla_plugin_fields(c, enabled: bool):
    """The model fields of the GLA plug-in (DLSN 4.3.3; jaxsr.models.plugin) shared by the
    host networks (EDSR, RCAN, FSRCNN): when enabled, GLA blocks (chunk 128, 3 rounds, as
    DLSN) after each of `attention_positions` (empty: the host's default position)."""
    c.model.attention = "gla" if enabled else "none"
    c.model.attention_positions = ()
    c.model.chunk_size = 128
    c.model.n_hashes = 3
    c.model.gla_reduction = 4
    return c


def sibling_config(config_file: str, name: str):
    """The config module `name` (e.g. 'kenet.py') next to `config_file` (pass __file__),
    loaded by path: config files are not a package."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    spec = importlib.util.spec_from_file_location(f"_jaxsr_config_{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
