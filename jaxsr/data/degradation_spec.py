"""What an LR synthesis pipeline is: `Spec` (every field of `config.degradation`), the
named presets and `resolve(config)`, which fills the fields a config leaves at None from
its preset and checks them. The recipes themselves are described in
jaxsr.data.degradations, which runs them (JAX and NumPy)."""
import dataclasses
import math

from jaxsr.data import kernels as K

KERNELS = ("none", "iso", "aniso")
PADDINGS = {"reflect": "mirror", "edge": "nearest", "wrap": "wrap", "symmetric": "reflect"}
QUANTIZE = ("none", "round", "round_clip", "floor")
CHOICES = {"kernel": KERNELS, "blur_padding": tuple(PADDINGS), "blur_mode": ("correlate", "convolve"),
           "blur_quantize": QUANTIZE, "blur_impl": ("auto", "fft", "direct"),
           "downsample": ("bicubic", "decimate"), "kernel_shift": ("none", "scale", "kair"),
           "quantize": QUANTIZE}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A fully resolved degradation (hashable; static under jit). See config_base.py."""
    scale: int = 2
    kernel: str = "none"            # none | iso | aniso
    kernel_size: int = 21
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    theta_min: float = 0.0
    theta_max: float = 0.0
    sample_variance: bool = False   # draw sigma^2 ~ U(sigma_min^2, sigma_max^2) (KAIR)
    kernel_disturb: float = 0.0     # DAN random_disturb: taps * (1 + U(0, d))
    kernel_shift: str = "none"      # mean offset -0.5 (sf - 1): sf = scale, or KAIR's random
    kernel_dihedral: bool = False   # random flip/rotation of Gaussian kernels (KAIR)
    motion_prob: float = 0.0        # share of random motion kernels (motion_kernels.py)
    blur_padding: str = "reflect"   # numpy pad modes: reflect | edge | wrap | symmetric
    blur_mode: str = "correlate"    # correlate (torch conv2d) | convolve (scipy convolve)
    blur_quantize: str = "none"
    blur_impl: str = "auto"         # auto: fft on CPU, direct grouped conv elsewhere
    downsample: str = "bicubic"     # bicubic (MATLAB) | decimate (upper-left pixel)
    bicubic_round: bool = False     # MATLAB uint8 semantics: round after each pass
    noise_min: float = 0.0          # AWGN std on the 0-255 scale
    noise_max: float = 0.0
    noise_levels: tuple = ()        # if given, the level is drawn from these
    noise_zero_prob: float = 0.0
    quantize: str = "round_clip"

    @property
    def has_noise(self) -> bool:
        return self.noise_max > 0 or any(v > 0 for v in self.noise_levels)


FIELDS = tuple(f.name for f in dataclasses.fields(Spec) if f.name != "scale")

_BI = dict(bicubic_round=True)
_NLC = dict(blur_padding="reflect", blur_mode="correlate", quantize="round")
PRESETS = {
    "custom": {},
    "bicubic": _BI,
    "bd": dict(_BI, kernel="iso", kernel_size=7, sigma_min=1.6, sigma_max=1.6,
               blur_padding="edge", blur_quantize="round_clip"),
    "nlcunet_iso": dict(_NLC, kernel="iso", kernel_size=21, sigma_min=0.2,
                        sigma_max={2: 2.0, 3: 3.0, 4: 4.0}),
    "nlcunet_aniso": dict(_NLC, kernel="aniso", kernel_size={2: 11, 4: 31}, sigma_min=0.6,
                          sigma_max=5.0, theta_min=-math.pi, theta_max=math.pi,
                          kernel_disturb=0.25),
    "kenet": dict(kernel="aniso", kernel_size={2: 11, 4: 21}, sigma_min=0.2, sigma_max=4.0,
                  theta_min=0.0, theta_max=math.pi, blur_padding="wrap", blur_mode="convolve",
                  downsample="decimate"),
    "kair": dict(kernel="aniso", kernel_size=25, sample_variance=True,
                 sigma_min=math.sqrt(0.6), sigma_max=math.sqrt(12.0), theta_min=0.0,
                 theta_max=math.pi, kernel_shift="kair", kernel_dihedral=True, motion_prob=0.5,
                 blur_padding="wrap", blur_mode="convolve", blur_quantize="floor",
                 downsample="decimate", noise_levels=tuple(range(25)), noise_zero_prob=1 / 9,
                 quantize="none"),
}


def preset(name: str, scale: int) -> dict:
    """The full field dict of a preset at `scale` ('dn<level>' for noisy-downscale)."""
    key = str(name).lower()
    if key.startswith("dn") and key[2:].replace(".", "", 1).isdigit():
        base = dict(_BI, noise_min=float(key[2:]), noise_max=float(key[2:]))
    elif key in PRESETS:
        base = PRESETS[key]
    else:
        raise ValueError(f"config.degradation.name={name!r} is unknown; use one of "
                         f"{sorted(PRESETS)} or dn<level> (e.g. dn15)")
    out = dataclasses.asdict(Spec())
    del out["scale"]
    for k, v in base.items():
        if isinstance(v, dict):
            if scale not in v:
                raise ValueError(f"degradation preset {name!r} defines {k} only for scales "
                                 f"{sorted(v)}, not config.scale={scale}")
            v = v[scale]
        out[k] = v
    return out


def resolve(config) -> Spec:
    """The full ConfigDict (`config.degradation`, `config.scale`) -> Spec; errors name the key."""
    deg, scale = config.degradation, int(config.scale)
    known = set(FIELDS) | {"name"}
    unknown = sorted(set(deg.keys()) - known)
    if unknown:
        raise ValueError(f"config.degradation has unknown fields {unknown}; known: {sorted(known)}")
    fields = preset(deg.get("name", "bicubic"), scale)
    for k in FIELDS:
        v = deg.get(k, None)
        if v is not None:
            fields[k] = tuple(v) if k == "noise_levels" else v
    for k, choices in CHOICES.items():
        if fields[k] not in choices:
            raise ValueError(f"config.degradation.{k}={fields[k]!r}: use one of {choices}")
    if fields["kernel"] != "none":
        K.check_size(fields["kernel_size"], "config.degradation.kernel_size")
        if not 0 < fields["sigma_min"] <= fields["sigma_max"]:
            raise ValueError("config.degradation: need 0 < sigma_min <= sigma_max, got "
                             f"{fields['sigma_min']}, {fields['sigma_max']}")
    if not 0.0 <= fields["motion_prob"] <= 1.0 or (fields["motion_prob"] > 0
                                                     and fields["kernel"] == "none"):
        raise ValueError(f"config.degradation.motion_prob={fields['motion_prob']}: must be in "
                         "[0, 1], and > 0 only with a blur kernel (kernel='iso'/'aniso')")
    if scale < 1:
        raise ValueError(f"config.scale={scale} must be >= 1")
    return Spec(scale=scale, **fields)
