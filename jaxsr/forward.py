"""Compiled forwards of a model on numpy batches: `bind(model, params)`, one compile per
input shape (kept in a small LRU), XLA's memory estimate of a forward and the memory the
device has, and reflect-padded batched runs. The layer under jaxsr.inference (tiling, chop,
self-ensemble, automatic tiling) and anything else that runs a model on images."""
import collections
import functools
import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import precision, process_executables

ApplyFn = Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------
# Compiled forwards and their memory
# ---------------------------------------------------------------------------------------

class BoundApply:
    """`model.apply` jitted with params as an argument (not baked into the HLO as
    constants), callable as `f(lr_nhwc)` and lowerable as `f.lower(spec)`.

    `compute_dtype` (`jaxsr.precision`): float32 (default) is plain `model.apply`;
    bfloat16 casts params and input inside the jitted function (params stay float32 on
    the device) and returns float32.
    """

    def __init__(self, model, params, compute_dtype=jnp.float32, **apply_kwargs):
        self.model, self.params = model, params
        self.compute_dtype = compute_dtype
        self.device = None          # where `on` put the params (None: as given)
        kwargs = dict(train=False, **apply_kwargs)
        # Per-image inputs (e.g. a blur kernel) are keyword arguments of the call.
        self._fn = jax.jit(lambda p, x, **extras: precision.apply(
            model, p, x, compute_dtype, **kwargs, **extras))

    def __call__(self, x, **extras):
        return self._fn(self.params, x, **extras)

    def lower(self, x, **extras):
        return self._fn.lower(self.params, x, **extras)

    def on(self, device) -> "BoundApply":
        """The same function with the params on `device`: it shares this one's jit (and
        its compile cache entry), and runs where its params are (jaxsr.eval_engine)."""
        other = object.__new__(BoundApply)
        other.__dict__.update(self.__dict__)
        other.params = jax.device_put(self.params, device)
        other.device = device
        return other


def bind(model, params, compute_dtype=jnp.float32, device=None,
         **apply_kwargs) -> BoundApply:
    """The `apply_fn` for `super_resolve` (deterministic eval: no 'lsh' rng), computed
    in `compute_dtype` (e.g. `precision.compute_dtype(config)`; default float32), with
    the params on `device` (default: the default device)."""
    bound = BoundApply(model, params, compute_dtype, **apply_kwargs)
    return bound.on(device if device is not None else jax.local_devices()[0])


_CACHE_FNS = 4  # functions whose executables are kept (LRU); also pins their ids
_compiled: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()
# Evaluation runs one thread per local device (jaxsr.eval_engine): the table is shared,
# the compiles themselves run outside the lock, in parallel.
_lock = threading.Lock()


def _split(apply_fn: ApplyFn):
    """(function, leading args, keyword args): params (BoundApply) and the arguments of a
    `functools.partial(jitted, ...)` stay runtime arguments, so one executable serves
    every image whose arguments have the same shapes."""
    if isinstance(apply_fn, BoundApply):
        return apply_fn._fn, (apply_fn.params,), {}
    if isinstance(apply_fn, functools.partial) and isinstance(apply_fn.func, BoundApply):
        bound = apply_fn.func
        return bound._fn, (bound.params,) + apply_fn.args, dict(apply_fn.keywords)
    if isinstance(apply_fn, functools.partial) and hasattr(apply_fn.func, "lower"):
        return apply_fn.func, apply_fn.args, dict(apply_fn.keywords)
    return apply_fn, (), {}


def _placement(x):
    """The devices a JAX array lives on (an executable runs only where it was compiled for:
    the same params on another device need their own compile), None for host values."""
    return tuple(sorted(d.id for d in x.devices())) if isinstance(x, jax.Array) else None


def _one_device(tree) -> list:
    """[the device] when every array of `tree` lives on that one device, else []."""
    devices = {d for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)
               for d in x.devices()}
    return list(devices) if len(devices) == 1 else []


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef,) + tuple((np.shape(x), str(getattr(x, "dtype", type(x))), _placement(x))
                              for x in leaves)


def compiled_forward(apply_fn: ApplyFn, shape):
    """(callable x -> y, XLA memory stats) of `apply_fn` for a float32 input of `shape`;
    compiled once per function and shape (and shapes of bound arguments)."""
    fn, args, kwargs = _split(apply_fn)
    key = id(fn)
    shape = tuple(int(s) for s in shape)
    sig = (shape, _signature((args, kwargs)) if (args or kwargs) else ())
    with _lock:
        if key not in _compiled or _compiled[key][0] is not fn:
            lowerable = fn if hasattr(fn, "lower") else jax.jit(fn)
            _compiled[key] = (fn, lowerable, {})
            while len(_compiled) > _CACHE_FNS:
                _compiled.popitem(last=False)
        _compiled.move_to_end(key)
        _, lowerable, table = _compiled[key]
        hit = table.get(sig)
    if hit is None:
        spec = jax.ShapeDtypeStruct(shape, jnp.float32)
        compiled = process_executables.load_or_compile(
            lowerable.lower(*args, spec, **kwargs), _one_device((args, kwargs)))
        with _lock:
            hit = table.setdefault(sig, (compiled, compiled.memory_analysis()))
    compiled, stats = hit
    return (lambda x: compiled(*args, x, **kwargs)), stats


def num_compiled(apply_fn: ApplyFn) -> int:
    """How many input shapes of `apply_fn` have been compiled (for tests and logs)."""
    fn = _split(apply_fn)[0]
    entry = _compiled.get(id(fn))
    return len(entry[2]) if entry and entry[0] is fn else 0


def forward_memory_bytes(apply_fn: ApplyFn, shape) -> int:
    """Peak device memory of the compiled forward for `shape`, from XLA's memory analysis
    (arguments incl. params + outputs + temporaries - aliased buffers)."""
    stats = compiled_forward(apply_fn, shape)[1]
    if stats is None:
        return 0
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
    return int(max(total, getattr(stats, "peak_memory_in_bytes", 0) or 0))


def device_of(apply_fn):
    """The device a `bind`/`BoundApply.on` function (or a partial of one) runs on, else
    None."""
    fn = apply_fn.func if isinstance(apply_fn, functools.partial) else apply_fn
    return getattr(fn, "device", None)


def available_memory_bytes(device=None) -> Optional[int]:
    """Free memory of `device` (default: this process's first; accelerators:
    memory_stats; CPU: MemAvailable)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory stats
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------
# Padding and batched runs
# ---------------------------------------------------------------------------------------

def padded_size(n: int, multiple: int = 1, min_size: int = 1) -> int:
    n = max(n, min_size)
    return -(-n // multiple) * multiple


def pad_image(x: np.ndarray, multiple: int = 1, min_size: int = 1) -> np.ndarray:
    """Reflect-pads the bottom/right of an (N)HWC array to the model's size requirements."""
    h, w = x.shape[-3:-1]
    ph, pw = padded_size(h, multiple, min_size) - h, padded_size(w, multiple, min_size) - w
    if ph == 0 and pw == 0:
        return x
    pads = [(0, 0)] * (x.ndim - 3) + [(0, ph), (0, pw), (0, 0)]
    return np.pad(x, pads, mode="reflect")


def run_batch(apply_fn: ApplyFn, x: np.ndarray, *, scale: int, multiple: int = 1,
              min_size: int = 1, batch: int = 0, progress=None) -> np.ndarray:
    """Runs an NHWC batch `batch` at a time (0: all at once); the last chunk is filled up
    by repeating so every call has the same shape (one compile). Pads and crops back."""
    n, h, w = x.shape[:3]
    xp = pad_image(np.asarray(x, np.float32), multiple, min_size)
    batch = n if batch <= 0 else min(batch, n)
    fwd = compiled_forward(apply_fn, (batch,) + xp.shape[1:])[0]
    outs = []
    for i in range(0, n, batch):
        chunk = xp[i:i + batch]
        if len(chunk) < batch:
            fill = np.repeat(chunk[-1:], batch - len(chunk), axis=0)
            chunk = np.concatenate([chunk, fill])
        outs.append(np.asarray(fwd(chunk))[: min(batch, n - i)])
        if progress is not None:
            progress.update(1)
    sr = np.concatenate(outs)
    if sr.shape[1:3] != (xp.shape[1] * scale, xp.shape[2] * scale):
        raise ValueError(f"model output {sr.shape[1:3]} is not scale={scale} times its "
                         f"input {xp.shape[1:3]}: check config.scale")
    return sr[:, : h * scale, : w * scale]
