"""Where a compiled program's HBM bytes go: per top-level instruction of the optimized HLO
text, output + operand bytes, attributed by its `op_name` metadata.

XLA's cost analysis gives one number per program ("bytes accessed"); this splits an
estimate of it the same way (each fusion or op reads its operands and writes its output
once; instructions in a while body count once per known trip count) into categories
and module paths, so that a module's bytes can be told apart:

  python experiments/hlo_bytes.py program.hlo [--top 30]      # from `compiled.as_text()`

Sizes follow the layouts of the TPU program, as its cost analysis does:
  * tiles: `f32[8,16,144,64]{3,2,1,0:T(8,128)}` pads its two minor dimensions (in layout
    order) to multiples of (8, 128), here 64 -> 128 channels: 2x the logical bytes; a
    minor dimension of 1-4 (rounds, lse, gather index pairs) pads up to 128x;
  * memory spaces: `S(1)` is VMEM. The cost analysis counts those operands too (its totals
    match only with them), so they are counted, and `by_category` reports their share
    as 'of which XLA ops on VMEM (S(1)) buffers';
  * a gather of single rows counts, like the cost analysis, a whole sublane tile (8 rows
    of 32-bit) per gathered row of its table: 8x the rows' bytes;
  * a Mosaic kernel (tpu_custom_call) counts its `pl.CostEstimate` bytes, which the cost
    analysis uses too; async copy/slice pairs (MSA moving buffers to VMEM) count the
    moved bytes, not the operand echoed in the start's tuple.
CPU and GPU programs have no tiles in their layouts: their sizes are the logical ones.
The estimate is not the cost analysis itself: compare its total with the row's
bytes_accessed before reading shares from it.
"""
import argparse
import collections
import re

_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
          "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\](?:\{([^}]*)\})?")
_HEADER = re.compile(r"\s*(ENTRY\s+)?%([\w.\-]+) .*\{\s*$")
_INSTR = re.compile(r"\s*(?:ROOT\s+)?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
         "conditional", "call", "after-all", "partition-id", "replica-id"}
_VMEM = "1"          # TPU memory space S(1)


def _dims(text: str) -> list:
    return [int(d) for d in text.split(",") if d]


def physical_dims(dims: list, layout: str | None) -> list:
    """The dimensions as stored: in layout order (major to minor), the minor ones padded to
    the first tile of `T(a,b)...` (sub-tiles such as (2,1) pack within it)."""
    if not layout or ":" not in layout:
        return dims
    minor_to_major, rest = layout.split(":", 1)
    order = _dims(minor_to_major)
    phys = [dims[i] for i in reversed(order)] if len(order) == len(dims) else list(dims)
    tile = re.match(r"T\(([\d,]+)\)", rest)
    if tile:
        tile = _dims(tile.group(1))
        phys = [1] * max(0, len(tile) - len(phys)) + phys
        for i, t in enumerate(tile):
            j = len(phys) - len(tile) + i
            phys[j] = -(-phys[j] // t) * t
    return phys


def memory_space(layout: str | None) -> str:
    m = re.search(r"S\((\d+)\)", layout or "")
    return m.group(1) if m else "0"


def shape_bytes(dtype: str, dims: str, layout: str | None = None) -> int:
    n = _BYTES[dtype]
    for d in physical_dims(_dims(dims), layout):
        n *= d
    return n


def type_bytes(text: str, space: str | None = None) -> int:
    """Bytes of every array shape in `text` (tile-padded); only memory space `space`'s if
    given."""
    return sum(shape_bytes(dt, dims, lay) for dt, dims, lay in _SHAPE.findall(text)
               if space is None or memory_space(lay) == space)


def _computations(text: str):
    comps, current = {}, None
    for line in text.splitlines():
        head = _HEADER.match(line)
        if head and "=" not in line.split("(")[0]:
            current = head.group(2)
            comps[current] = {"entry": bool(head.group(1)), "instrs": []}
            continue
        m = _INSTR.match(line)
        if m and current:
            name, typ, op, rest = m.groups()
            comps[current]["instrs"].append((name, op, typ, rest))
    types = {name: typ for c in comps.values() for name, _, typ, _ in c["instrs"]}
    return comps, types


def _scheduled(comps) -> dict:
    """Computations that run as top-level code (ENTRY, loop bodies, branches) -> how many
    times (a while body: its known trip count, else once)."""
    entry = next(c for c, v in comps.items() if v["entry"])
    runs, todo = {entry: 1}, [entry]
    while todo:
        c = todo.pop()
        for _, op, _, rest in comps[c]["instrs"]:
            times, called = runs[c], []
            if op == "while":
                trip = re.search(r'known_trip_count":\{"n":"(\d+)"', rest)
                times *= int(trip.group(1)) if trip else 1
                called = re.findall(r"(?:condition|body)=%([\w.\-]+)", rest)
            elif op in ("conditional", "call"):
                called = [s for s in re.findall(r"%([\w.\-]+)", rest) if s in comps]
            for s in called:
                if s not in runs:
                    runs[s] = times
                    todo.append(s)
    return runs


def _gathered_table_bytes(comps, fused: str | None) -> dict:
    """{fused parameter index: bytes} for the tables a fusion gathers rows of: one sublane
    tile (8 rows of 32-bit, 16 of 16-bit) of padded row bytes per gathered row."""
    out = {}
    instrs = comps.get(fused, {"instrs": []})["instrs"]
    params = {name: int(re.match(r"(\d+)", rest).group(1))
              for name, op, _, rest in instrs if op == "parameter"}
    for _, op, typ, rest in instrs:
        table = re.match(r"%([\w.\-]+)", rest)
        sizes = re.search(r"slice_sizes=\{([\d,]*)\}", rest)
        if op != "gather" or not table or table.group(1) not in params or not sizes:
            continue
        (dtype, dims, _), row = _SHAPE.findall(typ)[0], _dims(sizes.group(1))
        n_row = max(1, _prod(row))
        rows = _prod(_dims(dims)) // n_row
        sublanes = 8 * 4 // _BYTES[dtype] if _BYTES[dtype] < 4 else 8
        out[params[table.group(1)]] = rows * sublanes * (-(-n_row // 128) * 128) * \
            _BYTES[dtype]
    return out


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def _operands(rest: str) -> list:
    return re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])


def instruction_bytes(comps, types, op: str, typ: str, rest: str, space=None) -> int:
    """Estimated bytes one execution of an instruction moves (module doc's rules)."""
    estimate = re.search(r'"cost_estimate":\{[^}]*"bytes_accessed":"(\d+)"', rest)
    if estimate:                # a Mosaic kernel: its own count (none of it in `space`)
        return int(estimate.group(1)) if space is None else 0
    operands = _operands(rest)
    fused = re.search(r"calls=%([\w.\-]+)", rest)
    gathered = _gathered_table_bytes(comps, fused.group(1)) if op == "fusion" else {}
    read = sum(gathered.get(i, 0) + type_bytes(types.get(o, ""), space) if i in gathered
               else type_bytes(types.get(o, ""), space) for i, o in enumerate(operands))
    written = type_bytes(typ, space)
    if op.endswith("-start"):   # (operand, destination, context): the operand is echoed
        written -= sum(type_bytes(types.get(o, ""), space) for o in operands)
    elif op.endswith("-done"):
        read = 0
    return read + max(written, 0)


def instructions(text: str, space: str | None = None):
    """(name, op, bytes, op_name) per top-level instruction that moves data (only memory
    space `space`'s operands and results if given: _VMEM for the S(1) share)."""
    comps, types = _computations(text)
    for comp, times in _scheduled(comps).items():
        for name, op, typ, rest in comps[comp]["instrs"]:
            if op in _FREE:
                continue
            nbytes = instruction_bytes(comps, types, op, typ, rest, space)
            meta = re.search(r'op_name="([^"]*)"', rest)
            yield name, op, nbytes * times, meta.group(1) if meta else ""


def category(op: str, op_name: str) -> str:
    """A coarse class of an instruction from its HLO op and op_name."""
    last = op_name.rsplit("/", 1)[-1]
    if op in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
              "collective-permute") or "all-gather" in op or "all-reduce" in op:
        return "collectives"
    if "pallas_call" in op_name:
        return ("Pallas row gathers" if "gather_rows" in op_name
                else "Pallas attention kernels")
    if "conv_general_dilated" in op_name:
        return "convolutions"
    if "dot_general" in last:
        return "attention / dense matmuls"
    if last in ("gather", "scatter", "scatter-add", "scatter_add") or "scatter" in op:
        return "gathers / scatters"
    if "roll" in op_name or last in ("concatenate", "slice", "pad", "dynamic_slice"):
        return "rolls / slices / concats"
    if op in ("copy", "copy-start", "copy-done") or last in ("transpose", "reshape"):
        return "copies / layout"
    if op.startswith("slice-") or (op == "custom-call" and not op_name):
        return "VMEM prefetch (slice-start/done, ConcatBitcast)"
    if "sort" in last or op == "sort":
        return "sort"
    return "elementwise / reductions"


def by_category(text: str) -> dict:
    """Estimated bytes per `category`, 'total' and the part of the XLA ops' bytes on S(1)
    (VMEM) buffers."""
    out = collections.Counter()
    for _, op, nbytes, op_name in instructions(text):
        out[category(op, op_name)] += nbytes
    out["total"] = sum(out.values())
    out["of which XLA ops on VMEM (S(1)) buffers"] = sum(
        r[2] for r in instructions(text, space=_VMEM))
    return dict(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("hlo", help="optimized HLO text (compiled.as_text())")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    with open(args.hlo) as f:
        text = f.read()
    for k, v in sorted(by_category(text).items(), key=lambda kv: -kv[1]):
        print(f"{v / 1e9:8.3f} GB  {k}")
    for name, op, nbytes, op_name in sorted(instructions(text), key=lambda r: -r[2])[:args.top]:
        print(f"{nbytes / 1e6:9.1f} MB  {op:12s} {name:28s} {op_name[-100:]}")


if __name__ == "__main__":
    main()
