"""The Pallas chunk-attention kernels alone, compiled for a TPU slice on this CPU machine:
per chip, what each kernel call moves and computes at the paper attention shapes.

  python experiments/aot_attention_kernels.py --targets v5litepod-8 v4-8
  python experiments/aot_attention_kernels.py --table

XLA's cost analysis sees a Mosaic kernel only as a custom call: without help it reports
the sizes of its operands and results and no FLOPs. The kernels attach a
`pl.CostEstimate` (jaxsr/attention/kernels/chunk_attention.py `_cost`: their matmul FLOPs
and the bytes their BlockSpecs read and write, tables counted in HBM tiles), which the
cost analysis and the TPU cost model then use; this script reads those per call from the
compiled program ('kernels') next to the whole program's totals ('program': the kernels
plus the XLA ops around them in this harness, e.g. layout copies of the inputs).

Shapes per chip are those the modules of experiments/aot_table.py --modules produce:
NLSA K 144 R 4 and GLA K 128 R 3 at the paper training input (batch 16 of 48x48 LR,
256 channels, over the slice's chips: 2 per chip on v5e-8, 4 on v4-8's 4 chips; G = items
x R groups of M = 2304 / K chunks, Cq = 64), forward + backward; GLA's eval forward of one 512x512 LR image per chip (G = 3, M = 2048),
forward only. Rows go to experiments/results/aot_attention_kernels_only.jsonl.
"""
import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsr import aot  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "aot_attention_kernels_only.jsonl")
# name -> (gla, items over all chips (None: one per chip), rounds, K, LR side, fwd+bwd)
CASES = {"NLSA K144 R4 train": (False, 16, 4, 144, 48, True),
         "GLA K128 R3 train": (True, 16, 3, 128, 48, True),
         "GLA K128 R3 eval 512": (True, None, 3, 128, 512, False)}


def kernel_estimates(hlo: str) -> dict:
    """{kernel name: its CostEstimate} of the Mosaic calls in a compiled program."""
    out = {}
    for m in re.finditer(r"%(lsh_chunk_attention_\w+?)(?:\.\d+)? = .*?\"cost_estimate\":"
                         r"\{\"flops\":\"(\d+)\",\"transcendentals\":\"(\d+)\","
                         r"\"bytes_accessed\":\"(\d+)\"", hlo):
        out[m.group(1)] = {"flops": int(m.group(2)), "bytes_accessed": int(m.group(4))}
    return out


def compile_case(name: str, target: str, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp
    from jaxsr import accelerators, target_platform, train
    from jaxsr.attention.kernels import sorted_chunk_attention
    gla, items, rounds, size, side, backward = CASES[name]
    t = accelerators.parse_target(target)
    devices = aot.target_devices(t)
    mesh = train.make_mesh(devices)
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    g, m = (items or len(devices)) * rounds, side * side // size
    spec = lambda c: jax.ShapeDtypeStruct((g, m, size, c), jnp.dtype(dtype),  # noqa: E731
                                          sharding=split)

    def attend(q, k, v, b):
        o, lse = sorted_chunk_attention(q, k, v, b, self_keys=not gla)
        return jnp.sum(o * o) + jnp.sum(lse)      # cotangents for every output

    def program(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            if not backward:
                return sorted_chunk_attention(*args, self_keys=not gla)
            return jax.grad(attend, (0, 1, 2, 3) if gla else (0, 1, 2))(*args)
    t0 = time.perf_counter()
    with target_platform.tracing_for("tpu"):
        compiled = jax.jit(program).lower(spec(64), spec(64), spec(256),
                                          spec(size) if gla else None).compile()
    hlo = compiled.as_text()
    kernels = kernel_estimates(hlo)
    total = {"flops": sum(k["flops"] for k in kernels.values()),
             "bytes_accessed": sum(k["bytes_accessed"] for k in kernels.values())}
    return {"case": name, "target": target, "dtype": dtype, "tables_per_chip": [
                g // len(devices), m, size], "seconds": round(time.perf_counter() - t0, 1),
            "kernels": dict(kernels, total=dict(total, roofline=aot.roofline(total, t.chip))),
            "program": aot.cost_report(compiled),
            "scatters": len(re.findall(r"\bscatter\(", hlo))}


def markdown(path: str) -> str:
    lines = ["| case | target | dtype | kernel GB/chip | kernel GFLOP | FLOP/B | roofline ms "
             "| bound | program GB | cost model ms |", "|" + "---|" * 10]
    for line in open(path):
        r = json.loads(line)
        k, p = r["kernels"]["total"], r["program"]
        opt = p.get("xla_optimal_seconds")
        lines.append(
            f"| {r['case']} | {r['target']} | {r['dtype']} | {k['bytes_accessed'] / 1e9:.3f} "
            f"| {k['flops'] / 1e9:.1f} | {k['flops'] / k['bytes_accessed']:.0f} "
            f"| {k['roofline']['seconds'] * 1e3:.3f} | {k['roofline']['bound']} "
            f"| {p['bytes_accessed'] / 1e9:.3f} | "
            + (f"{opt * 1e3:.3f} |" if opt else "none |"))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", nargs="+", default=["v5litepod-8", "v4-8"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--table", action="store_true", help="print the markdown table and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(args.out))
        return
    aot.prepare_host()
    for name in args.cases:
        for target in args.targets:
            for dtype in args.dtypes:
                row = compile_case(name, target, dtype)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row)[:300], flush=True)


if __name__ == "__main__":
    main()
