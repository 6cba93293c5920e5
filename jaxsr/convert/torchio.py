"""Reading and writing PyTorch checkpoint files (.pth / .pt / .safetensors).

torch is an optional dependency (`pip install -e .[torch]`): it is imported inside the
functions, so `import jaxsr.convert` works without it. state_dicts cross this boundary as
dicts of NumPy arrays.
"""
import logging
import pathlib
from typing import Mapping

import numpy as np

from jaxsr.convert.core import ConversionError

# Wrappers used by training frameworks around the state_dict, tried in this order.
# BasicSR saves {'params': ...} or {'params_ema': ...} (the EMA weights are the ones its
# test configs load when present); Lightning and others use 'state_dict' / 'model'.
NESTING_KEYS = ("params_ema", "params", "state_dict", "model")
_ZIP_MAGIC = b"PK\x03\x04"


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("PyTorch checkpoint conversion needs torch: pip install "
                          f"torch==2.13.0 (or pip install -e .[torch]); import failed: {e}") from e
    return torch


def sniff_format(path: pathlib.Path) -> str:
    """'pth' (torch zip or legacy pickle) or 'safetensors', from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":     # zip / pickle protocol 2+
        return "pth"
    if len(head) >= 9 and head[8:9] == b"{":                    # u64 header length, JSON
        return "safetensors"
    raise ConversionError(f"{path}: not a PyTorch checkpoint or safetensors file "
                          f"(it starts with {head[:8]!r}; {path.stat().st_size} bytes)")


def _read_raw(path: pathlib.Path, fmt: str):
    torch = _import_torch()
    try:
        if fmt == "safetensors":
            import safetensors.torch
            return safetensors.torch.load_file(str(path), device="cpu")
        # weights_only: never execute pickled code from a downloaded checkpoint.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for a damaged file
        raise ConversionError(
            f"{path}: could not be read as a {fmt} checkpoint ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}). The file may be "
            f"truncated (incomplete download) or not a saved state_dict "
            f"(a pickled whole model needs its class; save model.state_dict() instead).") from e


def unwrap_state_dict(obj, source: str = "checkpoint", param_key: str | None = None) -> dict:
    """BasicSR/Lightning nesting and DataParallel `module.` prefixes -> flat state_dict."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{source}: holds a {type(obj).__name__}, not a state_dict "
                              f"(a dict of tensors)")
    if param_key is not None:
        if param_key not in obj:
            raise ConversionError(f"{source}: no {param_key!r} entry; top-level keys: "
                                  f"{sorted(map(str, obj))[:20]}")
        obj = obj[param_key]
    else:
        for k in NESTING_KEYS:
            if k in obj and isinstance(obj[k], Mapping):
                logging.info("%s: using the state_dict under %r (of %s)", source, k,
                             [n for n in NESTING_KEYS if n in obj])
                obj = obj[k]
                break
    bad = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not hasattr(v, "shape")]
    if bad:
        raise ConversionError(f"{source}: entries that are not tensors: {bad[:20]}; "
                              f"pass --param_key to pick the state_dict inside it")
    out = {}
    for k, v in obj.items():
        k = str(k)
        k = k[len("module."):] if k.startswith("module.") else k
        if k in out:
            raise ConversionError(f"{source}: key {k!r} appears with and without 'module.'")
        out[k] = v
    return out


def to_numpy(t) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    t = t.detach().cpu()
    # bf16/fp16 have no (or a lossy) NumPy twin; the models' params are float32 anyway.
    return t.float().numpy() if t.is_floating_point() else t.numpy()


def _read(path) -> tuple[pathlib.Path, object]:
    from jaxsr import paths
    if paths.is_remote(path):          # torch.load and safetensors read local files only
        if not paths.isfile(path):
            raise ConversionError(f"{path}: no such file")
        with paths.local_copy(path) as local:
            return path, _read_raw(pathlib.Path(local), sniff_format(pathlib.Path(local)))
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    return path, _read_raw(path, sniff_format(path))


def load_state_dict(path, param_key: str | None = None) -> dict[str, np.ndarray]:
    """Reads a .pth/.pt/.safetensors file into a flat {torch key: float32 ndarray} dict."""
    path, obj = _read(path)
    sd = unwrap_state_dict(obj, str(path), param_key)
    return {k: to_numpy(v) for k, v in sd.items()}


EMA_LAYOUT = ("params", "params_ema")      # BasicSR's save_network(net_g, net_g_ema)


def load_state_dicts(path, param_key: str | None = None) -> dict[str, dict]:
    """{'params': state_dict} and, for a BasicSR file holding both 'params' and
    'params_ema' (and no --param_key), also {'params_ema': state_dict}."""
    path, obj = _read(path)
    if param_key is None and isinstance(obj, Mapping) and all(
            isinstance(obj.get(k), Mapping) for k in EMA_LAYOUT):
        logging.info("%s: BasicSR layout, reading both 'params' and 'params_ema'", path)
        return {k: {n: to_numpy(v) for n, v in unwrap_state_dict(obj, str(path), k).items()}
                for k in EMA_LAYOUT}
    sd = unwrap_state_dict(obj, str(path), param_key)
    return {"params": {k: to_numpy(v) for k, v in sd.items()}}


def save_state_dict(state_dict: Mapping[str, np.ndarray], path, fmt: str | None = None, *,
                    overwrite: bool = False) -> str:
    """Writes float32 tensors in the given key order; fmt 'pth' or 'safetensors'
    (default: from the file extension). A .pth may nest one level ({'params': sd,
    'params_ema': sd}, BasicSR's layout). Atomic (a failed write leaves nothing, or the old
    file); an existing file is refused unless `overwrite`. Returns the format used."""
    from jaxsr import fileio
    path = str(path)                  # not pathlib: it would turn gs://b/x into gs:/b/x
    fmt = fmt or ("safetensors" if path.endswith(".safetensors") else "pth")
    if fmt not in ("pth", "safetensors"):
        raise ValueError(f"--format must be 'pth' or 'safetensors', got {fmt!r}")
    torch = _import_torch()
    # np.require: a C-contiguous, writable array (torch warns on read-only buffers).
    as_torch = lambda sd: {k: torch.from_numpy(np.require(v, requirements=("C", "W")))
                           for k, v in sd.items()}
    nested = any(isinstance(v, Mapping) for v in state_dict.values())
    if nested and fmt == "safetensors":
        raise ValueError("safetensors holds one flat state_dict, not "
                         f"{sorted(state_dict)}: write a .pth")
    tensors = {k: as_torch(v) for k, v in state_dict.items()} if nested else \
        as_torch(state_dict)
    with fileio.atomic_path(path, overwrite=overwrite) as tmp:
        if fmt == "safetensors":
            import safetensors.torch
            safetensors.torch.save_file(tensors, tmp, metadata={"format": "pt"})
        else:
            torch.save(tensors, tmp)
    return fmt
