"""Whole paper programs compiled for a TPU slice, kept with their optimized HLO: cost
analysis, roofline, scatter count, and where the bytes go per module (op_name metadata).

  # one row per program (train step or eval forward), appended to --out; the HLO text
  # goes to --hlo_dir (large: keep it out of the repo)
  python experiments/step_attribution.py compile configs/dlsn.py --program train_step \
      --set model.scan_blocks=false --hlo_dir /tmp/hlo
  python experiments/step_attribution.py compile configs/dlsn.py --program eval_forward \
      --eval_lr_size 512 --set model.scan_blocks=false
  # bytes of one saved program per module path (depth 2: body_3/body_4 = GLAFFM 3's GLA)
  python experiments/step_attribution.py attribute /tmp/hlo/dlsn_train_step.hlo \
      --prefix body_3 --depth 2

Compile it unrolled (model.scan_blocks=false): XLA's cost analysis counts a scan body once,
so a scanned program under-counts FLOPs and bytes (the scatter check is fine scanned: a
scan body holds every op kind). Byte attribution is experiments/hlo_bytes.py's per
instruction estimate (tile-aware), which is compared to the cost analysis total.
"""
import argparse
import collections
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(__file__), "results",
                       "aot_steps_pallas_v5litepod-8.jsonl")


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_config(spec: str, sets: list, dtype: str):
    """aot_table.load's config (compile-only settings) + dotted `key=value` overrides,
    typed like the value they replace (string keys such as model.scan_blocks stay str)."""
    from experiments import aot_table, common
    c = aot_table.load(spec, dtype)
    for item in sets:
        key, _, value = item.partition("=")
        common.set_dotted(c, key, value, convert=lambda old, text: (
            text if isinstance(old, str) else _parse_value(text)))
    return c


def compile_program(config, target_spec: str, program: str, eval_lr_size: int):
    """(compiled, attention formulations, seconds) of one program, as aot.run_compile
    builds it."""
    from jaxsr import accelerators, aot, objectives, target_platform, train
    from jaxsr.attention import chunked, impl
    from jaxsr.models import build_model
    target = accelerators.parse_target(target_spec)
    devices = aot.target_devices(target)
    with target_platform.tracing_for(target.platform), \
            impl.record_formulations() as attention, chunked.default_chunks_per_step(None):
        repl, _ = train.shardings(devices)
        objective = objectives.make(config, build_model(config))
        state = aot.abstract_state(objective, config, repl)
        if program == "train_step":
            build = lambda: aot.lower_train_step(config, devices, objective, state)
        else:
            build = lambda: aot.lower_forward(config, devices, state["params"], eval_lr_size)
        compiled, times = aot.compile_timed(build)
    formulations = impl.describe_formulations(attention,
                                              config.model.get("attention_impl", "auto"))
    return compiled, target, formulations, times, len(devices)


def scatter_ops(text: str) -> list:
    """op_name of each scatter instruction of an optimized HLO text."""
    out = []
    for line in text.splitlines():
        if re.search(r"\sscatter\(", line):
            m = re.search(r'op_name="([^"]*)"', line)
            out.append(m.group(1) if m else line.strip()[:200])
    return out


def compile_row(args) -> dict:
    from jaxsr import aot
    from jaxsr.xla_analysis import cost_report, memory_report
    config = load_config(args.config, args.set, args.dtype)
    compiled, target, formulations, times, n_dev = compile_program(
        config, args.target, args.program, args.eval_lr_size)
    text = compiled.as_text()
    cost = cost_report(compiled)
    row = {"config": args.config, "set": args.set, "program": args.program,
           "target": args.target, "compute_dtype": str(config.train.compute_dtype),
           "attention": formulations, **times, "memory": memory_report(compiled),
           "cost": cost, "roofline": aot.roofline(cost, target.chip),
           "flop_per_byte": (cost["flops"] / cost["bytes_accessed"]
                             if cost.get("bytes_accessed") else None)}
    if args.program == "eval_forward":
        row["lr_shape"] = list(aot.eval_lr_shape(config, args.eval_lr_size, n_dev))
    scatters = scatter_ops(text)
    row["scatters"] = len(scatters)
    row["scatter_op_names"] = sorted(set(scatters))[:20]
    if args.hlo_dir:
        os.makedirs(args.hlo_dir, exist_ok=True)
        name = re.sub(r"[^\w]+", "_", f"{args.config}_{'_'.join(args.set)}_{args.program}")
        row["hlo_file"] = os.path.join(args.hlo_dir, name + ".hlo")
        with open(row["hlo_file"], "w") as f:
            f.write(text)
        from experiments import hlo_bytes
        row["hlo_bytes_total"] = hlo_bytes.by_category(text)["total"]
    return row


def module_of(op_name: str, depth: int) -> str:
    """The flax module path of an op_name, `depth` levels below the model's body."""
    parts = [p for p in op_name.split("/") if re.fullmatch(r"(body|tail|head)(_\d+)?", p)
             or p.startswith("scan_body")]
    return "/".join(parts[:depth]) if parts else "(no module)"


def attribute(text: str, prefix: str | None, depth: int) -> dict:
    """Estimated bytes per module path (and per hlo_bytes category under `prefix`)."""
    from experiments import hlo_bytes
    per_module = collections.Counter()
    per_cat = collections.defaultdict(collections.Counter)
    for _, op, nbytes, op_name in hlo_bytes.instructions(text):
        mod = module_of(op_name, depth)
        per_module[mod] += nbytes
        if prefix is None or mod == prefix or mod.startswith(prefix + "/"):
            per_cat[mod][hlo_bytes.category(op, op_name)] += nbytes
    return {"per_module": dict(per_module), "per_category": {k: dict(v) for k, v in
                                                              per_cat.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile")
    c.add_argument("config")
    c.add_argument("--program", choices=("train_step", "eval_forward"), default="train_step")
    c.add_argument("--target", default="v5litepod-8")
    c.add_argument("--dtype", default="float32", help="train.compute_dtype")
    c.add_argument("--eval_lr_size", type=int, default=512)
    c.add_argument("--set", action="append", default=[], help="key=value config override")
    c.add_argument("--hlo_dir", default=None)
    c.add_argument("--out", default=RESULTS)
    a = sub.add_parser("attribute")
    a.add_argument("hlo")
    a.add_argument("--prefix", default=None)
    a.add_argument("--depth", type=int, default=2)
    a.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "compile":
        from jaxsr import aot
        aot.prepare_host(args.target)
        t0 = time.time()
        row = compile_row(args)
        row["commit"] = os.popen("git rev-parse --short HEAD").read().strip()
        row["load_after"] = os.getloadavg()
        row["wall_seconds"] = round(time.time() - t0, 1)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in row if k not in ("attention",)}, indent=1))
    else:
        with open(args.hlo) as f:
            res = attribute(f.read(), args.prefix, args.depth)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)
        for k, v in sorted(res["per_module"].items(), key=lambda kv: -kv[1])[:40]:
            print(f"{v / 1e9:8.3f} GB  {k}")
        for mod, cats in sorted(res["per_category"].items()):
            print(mod, {k: round(v / 1e9, 3) for k, v in sorted(cats.items(),
                                                                   key=lambda kv: -kv[1])})


if __name__ == "__main__":
    main()
