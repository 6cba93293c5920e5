"""Blind-SR test sets: Gaussian8, BD, DN<level>, preset-degraded sets and DIV2KRK, by name.

Naming scheme (case-insensitive suffix; `<Set>` is a folder under the benchmarks dir with
an `HR/` subfolder, e.g. Set5, Set14, B100, Urban100):

  <Set>_gaussian8      NLCUnet configuration 1 / DAN test: every HR (modcropped to the scale)
                       with 8 isotropic 21x21 kernels, sigma = linspace(0.80, 1.60, 8) at x2,
                       (1.35, 2.40) at x3, (1.80, 3.20) at x4; reflect-padded correlation,
                       MATLAB bicubic, round/clip to uint8. Image names `<stem>_k<i>`.
  <Set>_BD             RDN/RCAN blur-downscale (7x7 Gaussian, sigma 1.6, replicate, uint8).
  <Set>_DN<level>      MATLAB bicubic + AWGN of std level/255, uint8 (DLSN Table V: 10..25).
  <Set>_<preset>       one random draw of a training preset per image: nlcunet_iso,
                       nlcunet_aniso, kenet, kair (LR stored as uint8).
  DIV2KRK              the stored DIV2KRK HR/LR/kernels (x2, x4), see jaxsr.data.div2krk.

Plain names (`Set5`) are not blind sets: `parse_name` returns None and `load_set` raises
KeyError. Random sets are seeded per image from (name, scale, image stem, seed), so they are
identical whether generated on the fly, written by `python -m jaxsr.tools.make_lr`, or
limited to the first N images. `write_set` stores `<out>/<name>/X<s>/` with HR/, LR/,
kernels/*.npy and manifest.json (kernel file, sigma, noise level, seed per image);
`load_set(..., generated_dir=out)` reads such a folder back instead of regenerating.
"""
import collections.abc
import dataclasses
import functools
import io
import json
import os
import re
import zlib

import numpy as np

from jaxsr.data import degradations as D
from jaxsr import fileio, paths
from jaxsr.data import div2krk, images

GAUSSIAN8 = {2: (0.80, 1.60), 3: (1.35, 2.40), 4: (1.80, 3.20)}
GAUSSIAN8_SIZE = 21
PRESET_KINDS = ("nlcunet_iso", "nlcunet_aniso", "kenet", "kair")
_NAME = re.compile(r"^(?P<base>.+?)_(?P<kind>gaussian8|bd|dn\d+(?:\.\d+)?|"
                   + "|".join(PRESET_KINDS) + r")$", re.IGNORECASE)
MANIFEST = "manifest.json"


def parse_name(name: str):
    """'Set5_DN15' -> ('Set5', 'dn15'); 'DIV2KRK' -> ('DIV2KRK', 'div2krk'); plain -> None."""
    if name.lower() == "div2krk":
        return "DIV2KRK", "div2krk"
    m = _NAME.match(name)
    return (m.group("base"), m.group("kind").lower()) if m else None


def is_blind_set(name: str) -> bool:
    return parse_name(name) is not None


def gaussian8_sigmas(scale: int) -> np.ndarray:
    if scale not in GAUSSIAN8:
        raise ValueError(f"Gaussian8 sets are defined for scales {sorted(GAUSSIAN8)}, not {scale}")
    return np.linspace(*GAUSSIAN8[scale], 8)


def item_seed(name: str, scale: int, stem: str, seed: int = 0) -> int:
    """Order-independent per-image seed."""
    return (zlib.crc32(f"{name.lower()}|x{scale}|{stem}".encode()) + 7919 * int(seed)) % 2 ** 32


def kind_spec(kind: str, scale: int, sigma=None) -> D.Spec:
    """The Spec that makes LR for a set kind (Gaussian8: one fixed sigma)."""
    if kind == "gaussian8":
        spec = D.Spec(scale=scale, **D.preset("nlcunet_iso", scale))
        return dataclasses.replace(spec, kernel_size=GAUSSIAN8_SIZE, sigma_min=float(sigma),
                                   sigma_max=float(sigma), quantize="round_clip")
    return D.Spec(scale=scale, **D.preset(kind, scale))


def degrade(hr_uint8: np.ndarray, spec: D.Spec, rng: np.random.Generator):
    """One HR uint8 image -> (LR uint8, extra dict with kernel / sigmas / noise level)."""
    lr_hw = (hr_uint8.shape[0] // spec.scale, hr_uint8.shape[1] // spec.scale)
    params = D.sample_params_np(rng, spec, 1, lr_hw)
    lr = D.apply_degradation_np(hr_uint8[None], params, spec)[0]
    lr = D.quantize(lr, "round_clip", np).astype(np.uint8)   # files are uint8
    extra = {k: float(params[k][0]) for k in ("sigma_x", "sigma_y", "theta", "noise_level")
             if k in params}
    extra["kernel"] = params["kernel"][0] if "kernel" in params else None
    if extra["kernel"] is not None:
        # How the kernel was applied: a model that assumes "blur, then every s-th pixel"
        # (USRNet) needs another kernel for blur + bicubic (jaxsr.models.blind).
        extra.update(downsample=spec.downsample, blur_mode=spec.blur_mode)
    return lr, extra


@functools.lru_cache(maxsize=4)
def _read_hr(path: str, scale: int) -> np.ndarray:
    img = images.modcrop(images.read_rgb(path), scale)
    img.setflags(write=False)           # shared by the 8 Gaussian8 items of one image
    return img


def _hr_paths(benchmarks_dir: str, base: str) -> list[str]:
    root = paths.join(benchmarks_dir, base)
    hr_dir = paths.join(root, "HR")
    if not paths.isdir(root):
        raise FileNotFoundError(f"benchmark set {base!r} not found: {root}")
    folder = hr_dir if paths.isdir(hr_dir) else root
    found = images.list_images(folder)
    if not found:
        raise FileNotFoundError(f"no HR images in {folder}")
    return found


class BlindSet(collections.abc.Sequence):
    """A lazy list of (image_name, hr_uint8, lr_uint8, extra) built on first access."""

    def __init__(self, name: str, scale: int, items: list, loader):
        self.name, self.scale, self.items, self._loader = name, scale, items, loader

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._loader(self.items[i])


def _stem(path: str) -> str:
    return os.path.splitext(paths.basename(path))[0]


def _generated(benchmarks_dir, name, base, kind, scale, max_images, seed) -> BlindSet:
    hr_files = _hr_paths(benchmarks_dir, base)
    hr_files = hr_files[:max_images] if max_images > 0 else hr_files
    items = []
    for p in hr_files:
        if kind == "gaussian8":
            items += [{"name": f"{_stem(p)}_k{i}", "hr": p, "sigma": float(s), "kernel_index": i}
                      for i, s in enumerate(gaussian8_sigmas(scale))]
        else:
            items.append({"name": _stem(p), "hr": p, "seed": item_seed(name, scale, _stem(p), seed)})

    def load(it):
        hr = _read_hr(it["hr"], scale)
        spec = kind_spec(kind, scale, it.get("sigma"))
        lr, extra = degrade(hr, spec, np.random.default_rng(it.get("seed", 0)))
        extra.update({k: it[k] for k in ("sigma", "kernel_index", "seed") if k in it},
                     degradation=kind)
        return it["name"], hr, lr, extra

    return BlindSet(name, scale, items, load)


def _from_folder(folder: str, name: str, scale: int, max_images: int) -> BlindSet:
    man = json.loads(paths.read_text(paths.join(folder, MANIFEST)))
    if int(man.get("scale", -1)) != scale or man.get("name", "").lower() != name.lower():
        raise ValueError(f"{folder}/{MANIFEST} describes {man.get('name')} x{man.get('scale')}, "
                         f"not {name} x{scale}")
    items = man["images"]
    if max_images > 0:
        stems = list(dict.fromkeys(it["hr"] for it in items))[:max_images]
        items = [it for it in items if it["hr"] in set(stems)]

    def load(it):
        hr = _read_hr(paths.join(folder, it["hr"]), scale)
        lr = images.read_rgb(paths.join(folder, it["lr"]))
        extra = {k: v for k, v in it.items() if k not in ("name", "hr", "lr", "kernel")}
        extra["kernel"] = (np.load(io.BytesIO(paths.read_bytes(paths.join(folder, it["kernel"]))))
                           if it.get("kernel") else None)
        if extra["kernel"] is not None:       # manifests written before these were stored
            for key in ("downsample", "blur_mode"):
                extra.setdefault(key, man.get("spec", {}).get(key))
        return it["name"], hr, lr, extra

    return BlindSet(name, scale, items, load)


def set_folder(out_dir: str, name: str, scale: int) -> str:
    return paths.join(out_dir, name, f"X{scale}")


def load_set(benchmarks_dir: str, name: str, scale: int, generated_dir: str = "",
             max_images: int = 0, seed: int = 0) -> BlindSet:
    """A blind test set by name: a lazy list of (image_name, hr_uint8, lr_uint8, extra).

    `extra` holds 'kernel' (float array or None) and, where defined, 'sigma',
    'noise_level', 'seed'. Sets found under `generated_dir` (written by `write_set` /
    make_lr) are read back; others are synthesised on the fly from `<Set>/HR`.
    Raises KeyError for names that are not blind sets (e.g. plain 'Set5').
    """
    parsed = parse_name(name)
    if parsed is None:
        raise KeyError(f"{name!r} is not a blind test set name; use <Set>_gaussian8, <Set>_BD, "
                       f"<Set>_DN<level>, <Set>_<{'|'.join(PRESET_KINDS)}> or DIV2KRK")
    base, kind = parsed
    if kind == "div2krk":
        es = div2krk.entries(paths.join(benchmarks_dir, "DIV2KRK"), scale)
        es = es[:max_images] if max_images > 0 else es
        return BlindSet(name, scale, es, lambda e: div2krk.load_entry(e, scale))
    folder = set_folder(generated_dir, name, scale) if generated_dir else ""
    if folder and paths.isfile(paths.join(folder, MANIFEST)):
        return _from_folder(folder, name, scale, max_images)
    return _generated(benchmarks_dir, name, base, kind, scale, max_images, seed)


def write_set(benchmarks_dir: str, name: str, scale: int, out_dir: str, max_images: int = 0,
              seed: int = 0, overwrite: bool = False) -> str:
    """Writes `<out_dir>/<name>/X<scale>/{HR,LR,kernels}/` and manifest.json; returns it.
    Every file is written atomically; a folder that already holds files is refused before
    any work unless `overwrite` (then its files are replaced)."""
    parsed = parse_name(name)
    if parsed is None or parsed[1] == "div2krk":
        raise ValueError(f"{name!r} is not a set that can be generated (DIV2KRK ships its own "
                         "LR; plain sets are bicubic: use make_lr --hr)")
    folder = set_folder(out_dir, name, scale)
    if not overwrite and paths.isdir(folder) and paths.listdir(folder):
        raise fileio.OverwriteError(f"{folder} already holds a set; not overwriting it "
                                    "(pass --overwrite to replace its files)")
    ds = _generated(benchmarks_dir, name, *parsed, scale, max_images, seed)
    written, entries = set(), []
    for it in ds.items:
        img_name, hr, lr, extra = ds._loader(it)
        hr_rel, lr_rel = f"HR/{_stem(it['hr'])}.png", f"LR/{img_name}.png"
        if hr_rel not in written:
            fileio.write_png(paths.join(folder, hr_rel), hr, overwrite=overwrite)
            written.add(hr_rel)
        fileio.write_png(paths.join(folder, lr_rel), lr, overwrite=overwrite)
        entry = {"name": img_name, "hr": hr_rel, "lr": lr_rel, "kernel": None}
        if extra.get("kernel") is not None:
            kname = f"k{it['kernel_index']}" if "kernel_index" in it else img_name
            entry["kernel"] = f"kernels/{kname}.npy"
            kpath = paths.join(folder, entry["kernel"])
            if kpath not in written:          # Gaussian8: one file per kernel, shared
                fileio.write_npy(kpath, extra["kernel"], overwrite=overwrite)
                written.add(kpath)
        entry.update({k: v for k, v in extra.items() if k != "kernel"})
        entries.append(entry)
    spec = kind_spec(parsed[1], scale, gaussian8_sigmas(scale)[0] if parsed[1] == "gaussian8"
                     else None)
    man = {"name": name, "scale": scale, "source": paths.join(benchmarks_dir, parsed[0]),
           "kind": parsed[1], "seed": seed, "spec": dataclasses.asdict(spec), "images": entries}
    if parsed[1] == "gaussian8":
        man["sigmas"] = [float(s) for s in gaussian8_sigmas(scale)]
        man["spec"]["sigma_min"] = man["spec"]["sigma_max"] = None   # per image: 'sigma'
    fileio.write_json(paths.join(folder, MANIFEST), man, overwrite=overwrite, indent=1)
    return folder


def write_sets(benchmarks_dir: str, names, scales, out_dir: str, seed: int = 0,
               max_images: int = 0, verbose: bool = True, overwrite: bool = False) -> list[str]:
    """make_lr's `--blind_set` entry: every name at every scale; returns the folders."""
    folders = []
    for name in names:
        for s in scales:
            if int(s) != s or s < 1:
                raise ValueError(f"--scale must be a positive integer, got {s}")
            folders.append(write_set(benchmarks_dir, name, int(s), out_dir, max_images, seed,
                                     overwrite))
            if verbose:
                print(f"{name} x{int(s)}: wrote {folders[-1]} (manifest.json)")
    return folders
