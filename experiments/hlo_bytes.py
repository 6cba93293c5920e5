"""Where a compiled program's HBM bytes go: per top-level instruction of the optimized HLO
text, output + operand bytes, attributed by its `op_name` metadata.

XLA's cost analysis gives one number per program ("bytes accessed"); this splits an
estimate of it the same way (each fusion or op reads its operands and writes its output
once; instructions in a while body count once per known trip count) into categories
and module paths, so that a module's bytes can be told apart:

  python experiments/hlo_bytes.py program.hlo [--top 30]      # from `compiled.as_text()`

`by_category(text)` is what `experiments/aot_table.py --modules` stores per row. The
estimate is not the cost analysis itself: compare its total with the row's
bytes_accessed before reading shares from it.
"""
import argparse
import collections
import re

_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
          "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_HEADER = re.compile(r"\s*(ENTRY\s+)?%([\w.\-]+) .*\{\s*$")
_INSTR = re.compile(r"\s*(?:ROOT\s+)?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
         "conditional", "call", "after-all", "partition-id", "replica-id"}


def type_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES[dtype]
    return total


def _computations(text: str):
    comps, current, sizes = {}, None, {}
    for line in text.splitlines():
        head = _HEADER.match(line)
        if head and "=" not in line.split("(")[0]:
            current = head.group(2)
            comps[current] = {"entry": bool(head.group(1)), "instrs": []}
            continue
        m = _INSTR.match(line)
        if m and current:
            name, typ, op, rest = m.groups()
            sizes[name] = type_bytes(typ)
            comps[current]["instrs"].append((name, op, typ, rest))
    return comps, sizes


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


def instructions(text: str):
    """(name, op, bytes, op_name) per top-level instruction that moves data."""
    comps, sizes = _computations(text)
    for comp, times in _scheduled(comps).items():
        for name, op, typ, rest in comps[comp]["instrs"]:
            if op in _FREE:
                continue
            operands = set(re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0]))
            nbytes = type_bytes(typ) + sum(sizes.get(o, 0) for o in operands)
            meta = re.search(r'op_name="([^"]*)"', rest)
            yield name, op, nbytes * times, meta.group(1) if meta else ""


def category(op: str, op_name: str) -> str:
    """A coarse class of an instruction from its HLO op and op_name."""
    last = op_name.rsplit("/", 1)[-1]
    if op in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
              "collective-permute") or "all-gather" in op or "all-reduce" in op:
        return "collectives"
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
    if "sort" in last or op == "sort":
        return "sort"
    return "elementwise / reductions"


def by_category(text: str) -> dict:
    """Estimated bytes per `category` (and 'total')."""
    out = collections.Counter()
    for _, op, nbytes, op_name in instructions(text):
        out[category(op, op_name)] += nbytes
    out["total"] = sum(out.values())
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
