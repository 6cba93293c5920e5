"""Table-driven, strict conversion between Flax params and PyTorch state_dicts.

An architecture is described by a `Table` (see `tables.py`): module-level `Rule`s that pair a
torch module name with a Flax module path plus a layout `kind`, the torch-only constant
keys (`Const`: MeanShift, DLSN's `a`) and `Probe`s that read config values (scale, width,
chunk size) back from tensor shapes for readable error messages. Nothing here knows about
any particular model: a new architecture only needs a table.

Templates use `{name}` placeholders that match a decimal index and are shared by both
sides, so one row works in both directions:
    Rule("body.{i}.body.{j}", "body_{i}/body_{j}", "conv")
maps torch `body.3.body.0.weight` <-> flax `body_3/body_0/kernel`.

torch is never imported here; state_dicts are dicts of NumPy arrays (see `torchio.py`).
"""
import dataclasses
import functools
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np


class ConversionError(ValueError):
    """A checkpoint does not match the architecture/config; the message lists every problem."""


# ----------------------------------------------------------------------------------------
# Layouts: how one module's leaves are named and laid out on each side.
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Leaf:
    """One parameter of a module: flax leaf name, torch leaf name, and the layout change.

    to_flax(t) = flip(transpose(t, perm), flip_axes); to_torch is its inverse.
    """
    flax: str
    torch: str
    perm: tuple[int, ...] | None = None
    flip_axes: tuple[int, ...] = ()

    def to_flax(self, t: np.ndarray) -> np.ndarray:
        x = np.transpose(t, self.perm) if self.perm else t
        return np.flip(x, self.flip_axes) if self.flip_axes else x

    def to_torch(self, x: np.ndarray) -> np.ndarray:
        x = np.flip(x, self.flip_axes) if self.flip_axes else x
        return np.transpose(x, np.argsort(self.perm)) if self.perm else x

    def torch_shape(self, flax_shape: Sequence[int]) -> tuple[int, ...]:
        if not self.perm:
            return tuple(flax_shape)
        return tuple(flax_shape[i] for i in np.argsort(self.perm))


_BIAS = Leaf("bias", "bias")
# Conv2d weight [O, I, kh, kw] <-> Conv kernel [kh, kw, I, O]; the same for depthwise convs
# (torch [C, 1, kh, kw] <-> flax feature_group_count=C kernel [kh, kw, 1, C]).
_CONV_W = Leaf("kernel", "weight", perm=(2, 3, 1, 0))
LAYOUTS: dict[str, tuple[Leaf, ...]] = {
    "conv": (_CONV_W, _BIAS),
    "linear": (Leaf("kernel", "weight", perm=(1, 0)), _BIAS),
    # nn.LayerNorm(use_scale) / LayerNorm2d: scale <-> weight, no layout change.
    "norm": (Leaf("scale", "weight"), _BIAS),
    # ConvTranspose2d weight [I, O, kh, kw] -> flax ConvTranspose(transpose_kernel=False)
    # kernel [kh, kw, I, O] with both spatial axes flipped (architectures.md section 9).
    "conv_transpose": (Leaf("kernel", "weight", perm=(2, 3, 0, 1), flip_axes=(0, 1)), _BIAS),
    # ConvTranspose2d -> flax ConvTranspose(transpose_kernel=True): kernel [kh, kw, O, I].
    "conv_transpose_t": (Leaf("kernel", "weight", perm=(2, 3, 1, 0)), _BIAS),
    # nn.PReLU(C): one slope per channel, a param named `weight` on both sides.
    "prelu": (Leaf("weight", "weight"),),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """torch module template <-> flax module template, with a layout kind from LAYOUTS.

    `leaves` overrides the kind's leaves (e.g. a bare parameter: Leaf("a", "a")).
    """
    torch: str
    flax: str
    kind: str = "conv"
    leaves: tuple[Leaf, ...] | None = None

    def leaf_set(self) -> tuple[Leaf, ...]:
        return self.leaves if self.leaves is not None else LAYOUTS[self.kind]


@dataclasses.dataclass(frozen=True)
class Const:
    """A torch-only constant tensor: written on export, checked (not stored) on import.

    `value(config)` gives the official value. `strict`: a different value in a checkpoint is
    an error (it changes the outputs) rather than a logged warning. `explain(actual)` may
    return a hint for the message (e.g. the rgb_range a MeanShift bias implies).
    """
    key: str
    value: Callable[[Any], np.ndarray]
    strict: bool = True
    explain: Callable[[np.ndarray], str] | None = None


@dataclasses.dataclass(frozen=True)
class Probe:
    """Reads a config value back from checkpoint shapes (None if it cannot be told)."""
    field: str                                           # dotted config path, e.g. 'model.n_feats'
    read: Callable[[Mapping[str, tuple]], Any]           # torch key -> shape  ->  value or None
    evidence: str = ""                                   # which tensors it looks at
    default: Any = None                                  # the model's value when config lacks it
    expected: Callable[[Any], Any] | None = None         # config -> value, instead of field


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    rules: tuple[Rule, ...]
    consts: tuple[Const, ...] = ()
    probes: tuple[Probe, ...] = ()
    # regexes that each match some key of this architecture's checkpoints (e.g. its
    # attention layers): only used to guess the architecture of a mismatching file.
    signature: tuple[str, ...] = ()
    # (config field, value) pairs the official torch class hard-codes; other values still
    # convert, but the official class cannot load the result (reported as a warning).
    official: tuple[tuple[str, Any], ...] = ()
    # How tensors scale with the pixel range (EDSR-PyTorch's rgb_range): (torch key regex,
    # power p), first match wins, unmatched keys p = 0. A checkpoint made for range R equals
    # the model for range r with every value times (R / r) ** p, exactly, when the network
    # is positively homogeneous (convs, ReLU/PReLU, pixel shuffle). Empty: not supported;
    # power None: a layer that is not scale-equivariant (rescaling is refused when present).
    range_scaling: tuple[tuple[str, int | None], ...] = ()


# ----------------------------------------------------------------------------------------
# Templates -> regexes
# ----------------------------------------------------------------------------------------

# `{name}` matches a decimal index; `{name:a|b}` one of the listed names, or any regex
# (`{i:\\d*[02468]}`: even indices); the pattern may be given on either side of a rule and
# applies to both.
_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


def _placeholder_patterns(*templates: str) -> dict[str, str]:
    pats: dict[str, str] = {}
    for t in templates:
        for m in _PLACEHOLDER.finditer(t):
            if m.group(2) or m.group(1) not in pats:
                pats[m.group(1)] = m.group(2) or r"\d+"
    return pats


def _to_regex(template: str, pats: Mapping[str, str], named: bool = True) -> str:
    parts, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        group = f"?P<{m.group(1)}>" if named else "?:"
        parts.append(f"({group}{pats[m.group(1)]})")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return "".join(parts)


@functools.lru_cache(maxsize=None)
def _rule_regex(rule: "Rule", side: str) -> re.Pattern:
    return re.compile(_to_regex(getattr(rule, side), _placeholder_patterns(rule.torch, rule.flax)))


def _fill(template: str, groups: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: groups[m.group(1)], template)


def _match_rule(rules: Sequence[Rule], module: str, side: str) -> tuple[Rule, dict] | None:
    """The unique rule whose `side` template matches `module` (ambiguity is a table bug)."""
    hits = []
    for rule in rules:
        m = _rule_regex(rule, side).fullmatch(module)
        if m:
            hits.append((rule, m.groupdict()))
    if len(hits) > 1:
        raise RuntimeError(f"conversion table is ambiguous for {side} module {module!r}: "
                           f"{[getattr(r, side) for r, _ in hits]}")
    return hits[0] if hits else None


def _translate(table: Table, key: str, src: str, dst: str) -> tuple[str, Leaf] | None:
    """A key on side `src` ('flax' paths use '/', 'torch' keys '.') -> the `dst` key and
    its leaf rule, or None if no rule applies."""
    sep = {"flax": "/", "torch": "."}
    module, _, leaf_name = key.rpartition(sep[src])
    hit = _match_rule(table.rules, module, src)
    if hit is None:
        return None
    rule, groups = hit
    for leaf in rule.leaf_set():
        if getattr(leaf, src) == leaf_name:
            target, name = _fill(getattr(rule, dst), groups), getattr(leaf, dst)
            return (f"{target}{sep[dst]}{name}" if target else name), leaf
    return None


def flax_to_torch_key(table: Table, flax_path: str) -> tuple[str, Leaf] | None:
    """'body_3/body_0/kernel' -> ('body.3.body.0.weight', leaf) or None if no rule applies."""
    return _translate(table, flax_path, "flax", "torch")


def torch_to_flax_key(table: Table, torch_key: str) -> tuple[str, Leaf] | None:
    """'body.3.body.0.weight' -> ('body_3/body_0/kernel', leaf) or None."""
    return _translate(table, torch_key, "torch", "flax")


# ----------------------------------------------------------------------------------------
# Flat dict helpers
# ----------------------------------------------------------------------------------------

def flatten(params: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested param dict -> {'a/b/kernel': leaf}, keeping insertion (module creation) order."""
    out = {}
    for k, v in params.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, path))
        else:
            out[path] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def _get_field(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part] if part in node else None
        if node is None:
            return None
    return node


# ----------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------

def const_values(table: Table, config) -> dict[str, np.ndarray]:
    return {c.key: np.asarray(c.value(config), np.float32) for c in table.consts}


def torch_order(table: Table) -> Callable[[str], tuple]:
    """Sort key putting torch keys in registration-like order: indices numerically, names in
    the order the table first mentions them (consts, then rules), weight before bias."""
    ranked = [re.compile(re.escape(p)) for c in table.consts for p in c.key.split(".")]
    for r in table.rules:
        pats = _placeholder_patterns(r.torch, r.flax)
        for seg in r.torch.split("."):
            # a `{x:a|b}` placeholder ranks its names in the listed order
            alt = next((m for m in _PLACEHOLDER.finditer(seg)
                        if m.group(2) and re.fullmatch(r"[\w|]+", m.group(2))), None)
            names = ([seg.replace(alt.group(0), a) for a in alt.group(2).split("|")]
                     if alt else [seg])
            ranked += [re.compile(_to_regex(n, pats, named=False)) for n in names]
    ranked += [re.compile(n) for n in ("weight", "scale", "bias")]

    def rank(name: str) -> int:
        return next((i for i, rx in enumerate(ranked) if rx.fullmatch(name)), len(ranked))

    def key(torch_key: str) -> tuple:
        return tuple((0, int(p), "") if p.isdigit() else (1, rank(p), p)
                     for p in torch_key.split("."))
    return key


def to_torch(table: Table, params: Mapping, config) -> dict[str, np.ndarray]:
    """Flax params -> state_dict of float32 NumPy arrays, in the official key order."""
    out = const_values(table, config)
    unmapped = []
    for path, x in flatten(params).items():
        hit = flax_to_torch_key(table, path)
        if hit is None:
            unmapped.append(path)
            continue
        key, leaf = hit
        out[key] = np.ascontiguousarray(leaf.to_torch(np.asarray(x, np.float32)))
    if unmapped:
        raise ConversionError(f"the {table.name!r} table has no rule for these Flax params "
                              f"({len(unmapped)}): {unmapped}")
    return {k: out[k] for k in sorted(out, key=torch_order(table))}


def expected_torch(table: Table, flax_shapes: Mapping[str, Any]) -> dict[str, tuple]:
    """torch key -> (flax path, leaf, torch shape, flax dtype) for an abstract flax tree."""
    out, unmapped = {}, []
    for path, sds in flax_shapes.items():
        hit = flax_to_torch_key(table, path)
        if hit is None:
            unmapped.append(path)
            continue
        key, leaf = hit
        out[key] = (path, leaf, leaf.torch_shape(sds.shape), sds.dtype)
    if unmapped:
        raise ConversionError(f"the {table.name!r} table has no rule for these Flax params "
                              f"({len(unmapped)}): {unmapped}")
    return out


def check_probes(table: Table, shapes: Mapping[str, tuple], config) -> list[str]:
    """One line per config field that the checkpoint's shapes contradict."""
    lines = []
    for probe in table.probes:
        found = probe.read(shapes)
        want = probe.expected(config) if probe.expected else _get_field(config, probe.field)
        want = probe.default if want is None else want
        if isinstance(want, (list, tuple)):
            want = tuple(want)
        if found is None or want is None or found == want:
            continue
        lines.append(f"config.{probe.field}={want!r} but the checkpoint has {found!r}"
                     + (f" (from {probe.evidence})" if probe.evidence else ""))
    return lines


def _check_consts(table: Table, state_dict: Mapping[str, np.ndarray], config):
    errors, warnings = [], []
    for c in table.consts:
        if c.key not in state_dict:
            continue                    # reported as missing
        want = np.asarray(c.value(config), np.float32)
        got = np.asarray(state_dict[c.key])
        if got.shape != want.shape:
            continue                    # reported as a shape mismatch
        if np.allclose(got, want, rtol=1e-5, atol=1e-6):
            continue
        msg = f"{c.key} = {np.round(got.ravel(), 5).tolist()}, expected {np.round(want.ravel(), 5).tolist()}"
        if c.explain:
            msg += f" ({c.explain(got)})"
        (errors if c.strict else warnings).append(msg)
    return errors, warnings


def _fmt_list(title: str, items: Sequence[str], limit: int = 400) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def from_torch(table: Table, state_dict: Mapping[str, np.ndarray], config,
               flax_shapes: Mapping[str, Any], source: str = "checkpoint",
               hint: str = "") -> tuple[dict, list[str]]:
    """Strict state_dict -> nested Flax params. Returns (params, warnings).

    Raises ConversionError listing every config contradiction, missing key, unexpected key,
    shape mismatch and wrong constant at once.
    """
    expected = expected_torch(table, flax_shapes)
    const_keys = [c.key for c in table.consts]
    want_keys = list(expected) + const_keys
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    missing = [k for k in want_keys if k not in state_dict]
    unexpected = [f"{k} {shapes[k]}" for k in state_dict if k not in expected and k not in const_keys]
    const_shapes = {k: v.shape for k, v in const_values(table, config).items()}
    mismatched = []
    for k, v in shapes.items():
        want = expected[k][2] if k in expected else const_shapes.get(k)
        if want is not None and tuple(want) != v:
            mismatched.append(f"{k}: checkpoint {v}, expected {tuple(want)}")
    const_errors, warnings = _check_consts(table, state_dict, config)
    probe_lines = check_probes(table, shapes, config)
    if missing or unexpected or mismatched or const_errors or probe_lines:
        parts = [f"{source} does not match the {table.name!r} architecture for this config"
                 f" (model.name={_get_field(config, 'model.name')!r}, scale={_get_field(config, 'scale')!r}):"]
        if hint:
            parts.append(f"  {hint}")
        if probe_lines:
            parts.append(_fmt_list("config values contradicted by the tensors", probe_lines))
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched), ("wrong constants", const_errors)):
            if items:
                parts.append(_fmt_list(title, items))
        raise ConversionError("\n".join(parts))
    flat = {}
    for key, (path, leaf, _, dtype) in expected.items():
        flat[path] = np.ascontiguousarray(leaf.to_flax(np.asarray(state_dict[key]))).astype(dtype)
    # keep the flax (module creation) order of the abstract tree
    ordered = {path: flat[path] for path in flax_shapes}
    return unflatten(ordered), warnings


def unofficial(table: Table, config) -> list[str]:
    """Config values that the official torch class cannot represent (warnings)."""
    out = []
    for field, value in table.official:
        got = _get_field(config, field)
        if got is not None and got != value:
            out.append(f"config.{field}={got!r}: the official {table.name} class hard-codes "
                       f"{value!r}, so it cannot load this state_dict (the key names follow "
                       f"the same scheme)")
    return out


def rescale_range(table: Table, state_dict: Mapping[str, np.ndarray], ratio: float) -> dict:
    """Multiplies each tensor by ratio ** power (see Table.range_scaling); constants untouched."""
    if not table.range_scaling:
        raise ConversionError(
            f"{table.name}: converting between rgb_range values is not supported (its "
            f"attention/normalisation layers are not scale-equivariant)")
    consts = {c.key for c in table.consts}
    out, refused = {}, []
    for k, v in state_dict.items():
        power = 0 if k in consts else next(
            (p for rx, p in table.range_scaling if re.fullmatch(rx, k)), 0)
        if power is None:
            refused.append(k)
        elif power:
            out[k] = (np.asarray(v, np.float32) * np.float32(ratio) ** power).astype(np.float32)
        else:
            out[k] = v
    if refused:
        raise ConversionError(f"{table.name}: cannot convert between rgb_range values with "
                              f"layers that are not scale-equivariant: {refused[:5]}")
    return out


def fits(table: Table, keys: Sequence[str]) -> bool:
    """Whether a checkpoint with these keys could be this architecture (for hints only)."""
    consts = {c.key for c in table.consts}
    if any(k not in consts and torch_to_flax_key(table, k) is None for k in keys):
        return False
    return all(any(re.fullmatch(sig, k) for k in keys) for sig in table.signature)
