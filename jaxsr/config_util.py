"""Config files and command-line overrides.

ml_collections' `config_flags` turns an override of a key that does not exist into a bare
AttributeError traceback; `check_overrides` runs first and fails with a message that lists
the valid keys instead.
"""
import importlib.util
import json
import os
import sys

import ml_collections


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """'configs/x.py' or 'configs/x.py:arg' -> get_config() / get_config('arg')."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location("_jaxsr_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """A ConfigDict from JSON (e.g. DIR/config.json); lists become the tuples configs use."""
    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        return tuple(tuples(v) for v in x) if isinstance(x, list) else x
    return ml_collections.ConfigDict(tuples(json.loads(text)))


def flat_keys(config, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(flat_keys(v, name + "."))
        else:
            keys.append(name)
    return keys


def override_keys(argv, flag: str = "config") -> list[str]:
    """Keys named by `--config.a.b=v` / `--config.a.b v` arguments."""
    keys = []
    for a in argv:
        if a.startswith(f"--{flag}."):
            keys.append(a[len(flag) + 3:].split("=", 1)[0])
    return keys


def config_spec_from_argv(argv, flag: str = "config") -> str | None:
    for i, a in enumerate(argv):
        if a == f"--{flag}" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(f"--{flag}="):
            return a.split("=", 1)[1]
    return None


def unknown_keys(config, keys) -> list[str]:
    valid = set(flat_keys(config))
    groups = {k.rsplit(".", 1)[0] for k in valid if "." in k}
    return [k for k in keys if k not in valid and k not in groups]


def check_overrides(argv=None, config=None, flag: str = "config") -> None:
    """Exits with status 2 and the list of valid keys when an override names no key."""
    argv = sys.argv if argv is None else argv
    keys = override_keys(argv, flag)
    if not keys:
        return
    if config is None:
        spec = config_spec_from_argv(argv, flag)
        if spec is None:
            return                      # config_flags reports the missing --config itself
        try:
            config = load_config_file(spec)
        except FileNotFoundError as e:
            sys.exit(f"error: {e}")
    bad = unknown_keys(config, keys)
    if bad:
        valid = "\n  ".join(sorted(flat_keys(config)))
        sys.exit(f"error: unknown config key(s): {', '.join(bad)}\nvalid keys:\n  {valid}")
