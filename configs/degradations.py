"""Degradation presets as config fragments, and EDSR trained on any of them.

  python -m jaxsr.main --config configs/degradations.py:bd --workdir workdirs/edsr_bd_x2
  python -m jaxsr.main --config configs/degradations.py:dn15,x3 --workdir workdirs/edsr_dn15_x3
  python -m jaxsr.main --config configs/degradations.py:nlcunet_iso,small --workdir workdirs/deg_small
Args (comma-separated): a preset name (bicubic | bd | dn<level> | nlcunet_iso |
nlcunet_aniso | kenet | kair), x2 (default) | x3 | x4, small (2-core CPU model).

In another config, use a preset with `c.degradation.name = 'bd'` (its fields are resolved
at run time for `config.scale`) or copy explicit values with
`c.degradation.update(get_degradation('bd', 2))`; any single field can be overridden,
e.g. `--config.degradation.sigma_max=3.0`. See docs/degradations.md for each recipe.
"""
import importlib.util
import os

import ml_collections

from jaxsr.data import degradations


def get_degradation(name: str, scale: int) -> ml_collections.ConfigDict:
    """The full, explicit `config.degradation` fragment of a preset at `scale`."""
    frag = ml_collections.ConfigDict(degradations.preset(name, scale))
    frag.name = str(name).lower()
    return frag


def _edsr(arg):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edsr.py")
    spec = importlib.util.spec_from_file_location("_configs_edsr", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg=None):
    tokens = [t for t in (arg or "bicubic").split(",") if t]
    scales = [t for t in tokens if t in ("x2", "x3", "x4")]
    names = [t for t in tokens if t not in scales and t != "small"]
    if len(names) != 1:
        raise ValueError(f"configs/degradations.py: give exactly one preset name, got {names} "
                         f"(arg {arg!r}); e.g. configs/degradations.py:bd,x2")
    small = "small" in tokens
    c = _edsr("small" if small else None)     # configs/edsr.py starts from base_config()
    c.scale = int(scales[0][1]) if scales else 2
    c.train.patch_size = c.get_ref("scale") * (32 if small else 48)   # follows --config.scale
    c.degradation.name = names[0].lower()
    degradations.resolve(c)             # unknown preset / scale: fail when the config loads
    return c
