"""What XLA says about a compiled program: per-device bytes (memory analysis) and FLOPs /
bytes accessed (cost analysis), read the same way for `--mode compile` (jaxsr.aot),
`--mode info` (jaxsr.summary) and the benchmarks (experiments/costs.py). XLA returns the
cost analysis as a dict or a one-element list depending on the version and backend."""

MEMORY_FIELDS = ("argument", "output", "temp", "alias", "generated_code")


def memory_report(compiled) -> dict:
    """Per-device bytes from XLA's memory analysis. 'total' = the larger of the program's
    peak (TPU: peak_memory, arguments included; it reports no temporaries for small
    programs) and arguments + outputs + temporaries - aliased (the donated state), plus the
    generated code: conservative where the two differ."""
    m = compiled.memory_analysis()
    rep = {f"{k}_bytes": int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in MEMORY_FIELDS}
    rep["peak_bytes"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    summed = rep["argument_bytes"] + rep["output_bytes"] + rep["temp_bytes"] - rep["alias_bytes"]
    rep["total_bytes"] = max(summed, rep["peak_bytes"]) + rep["generated_code_bytes"]
    return rep


def cost_report(compiled) -> dict:
    """FLOPs and bytes accessed of one call per device (XLA's cost analysis; the
    partitioned SPMD program, so per device)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    if not cost:                # XLA:GPU without a device: memory analysis only
        return {"flops": None, "bytes_accessed": None}
    rep = {"flops": float(cost["flops"]) if "flops" in cost else None,
           "bytes_accessed": float(cost.get("bytes accessed", 0.0))}
    # The TPU compiler's own cost-model estimate (negative when it has none: not kept).
    if float(cost.get("optimal_seconds", -1.0)) > 0:
        rep["xla_optimal_seconds"] = float(cost["optimal_seconds"])
    return rep
