"""DIV2KRK (KernelGAN's blind-SR benchmark) reader.

Layout (benchmarks/DIV2KRK, see data/README.md):
  gt/im_N.png            DIV2K validation HR (RGB)
  lr_x2/im_N.png, lr_x4/im_N.png   LR made with that image's kernel (RGBA, alpha 255)
  gt_k_x2/kernel_N.mat (11x11), gt_k_x4/kernel_N.mat (31x31), MATLAB variable `Kernel`

The stored LR files are the reference (x2 LR has a small per-image offset that a
re-generation does not reproduce), so they are read, not synthesised. Only images with
both an HR and an LR file are returned; the kernel is optional per image.
"""
import io
import re

import numpy as np

from jaxsr import paths
from jaxsr.data import images

SCALES = (2, 4)


def _index(fname: str):
    m = re.fullmatch(r"im_(\d+)\.png", fname)
    return int(m.group(1)) if m else None


def read_kernel(path: str) -> np.ndarray:
    """The `Kernel` variable of a DIV2KRK .mat file (float64, sums to 1); local or gs://."""
    from scipy import io as sio
    try:
        source = io.BytesIO(paths.read_bytes(path)) if paths.is_remote(path) else path
        mat = sio.loadmat(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"DIV2KRK kernel file not found: {path}") from None
    except Exception as e:                      # noqa: BLE001 (scipy raises several types)
        raise ValueError(f"cannot read DIV2KRK kernel {path}: {e}") from None
    if "Kernel" not in mat:
        raise ValueError(f"{path} has no variable 'Kernel' (found "
                         f"{sorted(k for k in mat if not k.startswith('__'))})")
    return np.asarray(mat["Kernel"], np.float64)


def entries(root: str, scale: int) -> list[dict]:
    """[{name, hr, lr, kernel (path or None)}] for the images that have HR and LR files
    (`root` local or gs://: one listing per folder)."""
    if scale not in SCALES:
        raise ValueError(f"DIV2KRK exists for scales {SCALES}, not config.scale={scale}")
    gt_dir, lr_dir = paths.join(root, "gt"), paths.join(root, f"lr_x{scale}")
    for d in (gt_dir, lr_dir):
        if not paths.isdir(d):
            raise FileNotFoundError(f"DIV2KRK folder missing: {d}")
    k_dir = paths.join(root, f"gt_k_x{scale}")
    lr_files = set(paths.listdir(lr_dir))
    kernels = set(paths.listdir(k_dir)) if paths.isdir(k_dir) else set()
    out = []
    for f in sorted(paths.listdir(gt_dir),
                    key=lambda f: (_index(f) is None, _index(f) or 0, f)):
        n = _index(f)
        if n is None or f not in lr_files:
            continue
        k = f"kernel_{n}.mat"
        out.append({"name": f"im_{n}", "hr": paths.join(gt_dir, f),
                    "lr": paths.join(lr_dir, f),
                    "kernel": paths.join(k_dir, k) if k in kernels else None})
    if not out:
        raise FileNotFoundError(f"no DIV2KRK image in {gt_dir} has an LR file in {lr_dir}")
    return out


def load_entry(e: dict, scale: int):
    """(name, hr uint8, lr uint8 RGB, {'kernel': float64 array or None})."""
    hr, lr = images.read_rgb(e["hr"]), images.read_rgb(e["lr"])   # RGBA LR -> RGB
    h, w = lr.shape[0] * scale, lr.shape[1] * scale
    if hr.shape[0] < h or hr.shape[1] < w:
        raise ValueError(f"DIV2KRK {e['lr']} ({lr.shape[1]}x{lr.shape[0]}) x{scale} is larger "
                         f"than its HR {e['hr']} ({hr.shape[1]}x{hr.shape[0]})")
    hr = hr[:h, :w]                                # modcrop, top-left as the protocol does
    kernel = read_kernel(e["kernel"]) if e["kernel"] else None
    return e["name"], hr, lr, {"kernel": kernel, "source": "DIV2KRK"}
