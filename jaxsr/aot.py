"""`--mode compile`: ahead-of-time compilation of the training step and the evaluation
forward for a TPU slice (or this machine), without the hardware.

libtpu's deviceless topology (`jax.experimental.topologies.get_topology_desc`) gives the
compile-only devices of any TPU slice on a CPU-only host, multi-host slices included (one
process compiles the SPMD program every host would run). On them this builds what training
builds -- `objectives.make`, `build_model`, `train.shardings(devices)`,
`train.make_step_fn` and the state of `train.init_state` as abstract values
(`jax.eval_shape`) -- lowers the jitted step with sharded `jax.ShapeDtypeStruct` inputs and
compiles it with the TPU compiler. The forward is `inference.BoundApply`, the function
evaluation jits, on one LR image per chip. The code paths that differ per platform are
traced for the target (`jaxsr.target_platform`): on a TPU the LSH attention runs all
chunks in one step, as it would there.

Reported per device (XLA's memory analysis) and per step (its cost analysis): argument,
output, temporary, aliased and generated-code bytes, their sum against the chip's HBM,
FLOPs and bytes accessed, and the roofline lower bound max(FLOPs / peak, bytes / HBM
bandwidth) from the published peaks (jaxsr.accelerators). A program that does not fit
raises DoesNotFitError with what to change (also when the compiler itself runs out).
"""
import json
import logging
import os
import re
import time

import jax
import jax.numpy as jnp

from jaxsr import accelerators, errors, inference, models, objectives, precision, train
from jaxsr import target_platform
from jaxsr.xla_analysis import MEMORY_FIELDS, cost_report, memory_report
from jaxsr.models import build_model

GIB = accelerators.GIB
DEFAULT_EVAL_LR = 256   # LR side of the compiled evaluation forward (config.eval.compile_lr_size)
PROGRAMS = ("train_step", "eval_forward")


class DoesNotFitError(ValueError):
    """The program needs more memory per chip than the target has."""


def quiet_libtpu_env() -> None:
    """On a host that is not a TPU VM libtpu logs errors about the missing TPU metadata
    when it loads; naming a (nonexistent) local worker silences them. Only defaults: a TPU
    VM's own settings win. Run before libtpu loads (before the first topology call)."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # Compile-only: no TPU is opened, so several compiling processes (and a training run
    # probing for a TPU) need not exclude each other through /tmp/libtpu_lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def prepare_host(target: str = "cpu") -> None:
    """Before the first backend use of a compile-only run: the host computes on its CPU
    (never grabbing a TPU or GPU another job may be using; JAX_PLATFORMS still wins) and
    libtpu stays quiet. GPU targets: XLA's Triton GEMM emitter is off, because without a
    device to autotune on it fails on the LSH hashing matmul ("Couldn't find output tile
    sizes", jax 0.10.2); cuBLAS is used instead."""
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    quiet_libtpu_env()
    if target.lower().startswith("h100") and "triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_gpu_enable_triton_gemm=false").strip()


def target_devices(target: accelerators.Target) -> list:
    """The devices to compile for: this host's (cpu), or the compile-only devices of a TPU
    slice (libtpu) or of a host of H100s (XLA's GPU target description)."""
    if target.platform == "cpu":
        return jax.devices()
    import importlib.util
    need = {"tpu": ("libtpu", "pip install 'libtpu==0.0.42.*' (the version jax[tpu] pins "
                              "for jax 0.10.2; make test installs it from "
                              "requirements-dev.txt)"),
            "gpu": ("jax_cuda12_plugin", "pip install 'jax-cuda12-plugin==0.10.2' "
                                         "'jax-cuda12-pjrt==0.10.2' (no GPU needed)")}
    module, how = need[target.platform]
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"--target={target.spec} needs the {target.platform.upper()} "
                         f"compiler ({module}), which is not installed: {how}")
    quiet_libtpu_env()
    from jax.experimental import topologies
    return list(topologies.get_topology_desc(**target.topology_kwargs()).devices)


# ---------------------------------------------------------------------------------------
# Compile.

def abstract_state(objective, config, repl):
    """The training state of `train.init_state` as sharded ShapeDtypeStructs (no arrays)."""
    shapes = jax.eval_shape(lambda: train.init_state(objective, config, repl))
    return train.abstract_like(shapes, repl)


def lower_train_step(config, devices, objective, state):
    """The lowered training step of `config` on `devices` (what train._loop runs)."""
    repl, data_sharding = train.shardings(devices)
    hr = jax.ShapeDtypeStruct(train.dummy_batch(config).shape, jnp.uint8,
                              sharding=data_sharding)
    flag = jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)
    step = train.make_step_fn(objective, config, repl, data_sharding)
    return step.lower(state, hr, flag)


def eval_lr_shape(config, lr_size: int, n_devices: int) -> tuple:
    """One LR image per device, padded as evaluation pads it (model multiple, min size)."""
    side = inference.padded_size(lr_size, models.input_multiple(config),
                                 models.min_input_size(config))
    return (n_devices, side, side, 3)


def lower_forward(config, devices, params, lr_size: int):
    """The lowered evaluation forward (`inference.BoundApply`, as evaluate jits it) on an
    LR batch of one `lr_size`^2 image per device, split over the devices."""
    repl, data_sharding = train.shardings(devices)
    bound = inference.BoundApply(build_model(config), params, precision.compute_dtype(config))
    x = jax.ShapeDtypeStruct(eval_lr_shape(config, lr_size, len(devices)), jnp.float32,
                             sharding=data_sharding)
    # Mosaic kernels (attention_impl='pallas') are not auto-partitioned: they shard_map
    # themselves over the mesh they are traced under (jaxsr/attention/kernels/entry.py).
    with jax.sharding.use_abstract_mesh(data_sharding.mesh.abstract_mesh):
        return bound.lower(x)


# ---------------------------------------------------------------------------------------
# Report.

def roofline(cost: dict, chip) -> dict:
    """Lower bound on one call's time: max(FLOPs / peak, bytes / HBM bandwidth)."""
    if chip is None or not cost["flops"]:
        return {}        # no cost analysis (GPU) or no published peak (cpu)
    t_flops = cost["flops"] / chip.bf16_flops
    t_bytes = cost["bytes_accessed"] / chip.hbm_bytes_per_s
    return {"seconds": max(t_flops, t_bytes), "compute_seconds": t_flops,
            "memory_seconds": t_bytes, "bound": "compute" if t_flops >= t_bytes else "memory",
            "peak_bf16_flops": chip.bf16_flops, "hbm_bytes_per_s": chip.hbm_bytes_per_s,
            "source": chip.source}


def advice(config, what: str) -> str:
    tips = ["lower config.train.batch_size (or config.train.per_device_batch_size)"
            if what == "train_step" else
            "evaluate in tiles (config.eval.tile) or a smaller --compile_lr_size"]
    if config.train.get("compute_dtype", "float32") == "float32" \
            and config.model.name not in precision.FLOAT32_ONLY_MODELS:
        tips.append("use config.train.compute_dtype=bfloat16")
    if what == "train_step":
        tips.append("lower config.train.patch_size")
    tips.append("or use a slice with more chips / a chip with more HBM")
    return ", ".join(tips)


_COMPILER_OOM = re.compile(r"required for .*?\(([\d.]+)([GM])\) exceeds available HBM "
                           r"\(([\d.]+)([GM])\)")


def does_not_fit_message(name, target, config, need=None, have=None, detail="") -> str:
    """'<program> on <target> needs X GiB of Y GiB per chip: <what to change>'."""
    have = have if have is not None else (target.chip.hbm_bytes if target.chip else None)
    amount = (f"needs {need / GIB:.1f} GiB of {have / GIB:.1f} GiB per chip"
              if need and have else "does not fit in the memory per chip")
    kind = f" ({target.chip.device_kind})" if target.chip else ""
    return f"{name} on {target.spec}{kind} {amount}{detail}: {advice(config, name)}"


def compiler_oom(name, error, target, config) -> str:
    text = str(error)
    m = _COMPILER_OOM.search(text)
    unit = lambda v, u: float(v) * (GIB if u == "G" else 2 ** 20)
    if m:
        return does_not_fit_message(name, target, config, unit(m[1], m[2]), unit(m[3], m[4]),
                                    " (TPU compiler)")
    return does_not_fit_message(name, target, config,
                                detail=f" (compiler: {text.splitlines()[0][:300]})")


def timed(fn):
    """(fn(), wall seconds, CPU seconds of this process: all its threads, XLA's pool too)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def compile_timed(build) -> tuple:
    """(compiled, times) of `build()`, which returns a compiled or a lowered program;
    lowered: tracing + lowering and XLA's compile are timed apart. compile_seconds and
    compile_cpu_seconds are the totals (what a first step waits for)."""
    out, wall, cpu = timed(build)
    times = {}
    if isinstance(out, jax.stages.Lowered):
        times = {"lower_seconds": wall, "lower_cpu_seconds": cpu}
        out, xla_wall, xla_cpu = timed(out.compile)
        wall, cpu = round(wall + xla_wall, 2), round(cpu + xla_cpu, 2)
    return out, {"compile_seconds": wall, "compile_cpu_seconds": cpu, **times}


def compile_and_report(name, build, target, config) -> dict:
    """{compile_seconds, compile_cpu_seconds, [lower_seconds, lower_cpu_seconds,] memory,
    cost, roofline} of `build()` (a compiled or lowered program), or {does_not_fit:
    message} when it needs more than the chip's HBM (memory analysis or the compiler's
    verdict)."""
    try:
        compiled, times = compile_timed(build)
    except Exception as e:        # the TPU compiler's own out-of-memory verdict
        if not errors.is_out_of_memory(e):
            raise
        return {"does_not_fit": compiler_oom(name, e, target, config)}
    rep = {**times, "memory": memory_report(compiled), "cost": cost_report(compiled)}
    rep["roofline"] = roofline(rep["cost"], target.chip)
    need = rep["memory"]["total_bytes"]
    if target.chip is not None and need > target.chip.hbm_bytes:
        rep["does_not_fit"] = does_not_fit_message(name, target, config, need)
    return rep


def run_compile(config, target: str = "cpu", eval_lr_size: int = DEFAULT_EVAL_LR,
                workdir: str | None = None, attention_chunks: int | None = None,
                programs=PROGRAMS, check: bool = True, fit: bool = False) -> dict:
    """Compiles the train step and the eval forward of `config` for `target`, writes
    `workdir`/compile.json, logs the report; raises DoesNotFitError when either does not
    fit in the chip's HBM (after writing the report). `attention_chunks`: LSH chunks per
    loop step (None: the target's default, all chunks at once on a TPU). `programs`: a
    subset of PROGRAMS. A model without parameters (bicubic) has no train step. `check`:
    False returns the report with 'does_not_fit' entries instead of raising. `fit`: find
    the largest per-chip batch instead (`fit_batch`, --fit_batch)."""
    if fit:
        return fit_batch(config, target, workdir=workdir, attention_chunks=attention_chunks)
    if not models.has_params(config):
        programs = tuple(p for p in programs if p != "train_step")
    target = accelerators.parse_target(target)
    devices = target_devices(target)
    train.check_batch(config, len(devices))
    result = {"target": target_describe(target, devices), "config": _config_summary(config)}
    from jaxsr.attention import chunked, impl
    traced_for = None if target.platform == "cpu" else target.platform
    with target_platform.tracing_for(traced_for), impl.record_formulations() as attention, \
            chunked.default_chunks_per_step(attention_chunks):
        repl, _ = train.shardings(devices)
        objective, state = None, {"params": {}}
        if models.has_params(config):
            objective = objectives.make(config, build_model(config))
            state = abstract_state(objective, config, repl)
        build = {"train_step": lambda: lower_train_step(config, devices, objective, state),
                 "eval_forward": lambda: lower_forward(config, devices, state["params"],
                                                       eval_lr_size)}
        for name in programs:
            result[name] = compile_and_report(name, build[name], target, config)
    if attention:      # which LSH attention implementation the programs use
        result["attention"] = impl.describe_formulations(
            attention, config.model.get("attention_impl", "auto"))
    if "train_step" in result:
        result["train_step"]["global_batch"] = int(config.train.batch_size)
    if "eval_forward" in result:
        result["eval_forward"]["lr_shape"] = list(eval_lr_shape(config, eval_lr_size,
                                                                len(devices)))
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "compile.json"), "w") as f:
            json.dump(result, f, indent=2)
    logging.info("\n%s", format_report(result))
    failed = [result[k]["does_not_fit"] for k in PROGRAMS
              if "does_not_fit" in result.get(k, {})]
    if failed and check:
        raise DoesNotFitError("; ".join(failed))
    return result


# ---------------------------------------------------------------------------------------
# --fit_batch: the largest per-chip batch.

def with_per_chip_batch(config, per_chip: int):
    """A copy of `config` whose micro-batch is `per_chip` samples on every chip."""
    c = config.copy_and_resolve_references()
    c.train.per_device_batch_size = per_chip
    return c


def next_probe(lo: int, hi: int | None, guess: int | None) -> int:
    """The next per-chip batch to compile: the memory model's `guess` (at least lo + 1)
    when it lies below the smallest misfit `hi`, else doubling from the largest fit `lo`
    (no misfit yet) or the midpoint (bisection)."""
    if guess is not None:
        guess = max(guess, lo + 1)       # at or below lo: check that lo + 1 does not fit
        if hi is None or guess < hi:
            return guess
    return max(1, 2 * lo) if hi is None else (lo + hi) // 2


def memory_guess(report: dict, per_chip: int, hbm_bytes: int) -> int | None:
    """The per-chip batch whose train step would just fill `hbm_bytes`, if temporaries grow
    in proportion to the batch and arguments, outputs and code do not."""
    mem = report.get("memory")
    if not mem or not mem["temp_bytes"]:
        return None
    fixed = mem["total_bytes"] - mem["temp_bytes"]
    return int((hbm_bytes - fixed) // (mem["temp_bytes"] / per_chip))


def search_batch(probe, hbm_bytes: int, limit: int) -> tuple[int, list]:
    """(largest b <= limit with probe(b) fitting, the probes in order): `probe(b)` is one
    compile's report ('does_not_fit' when it does not). The next b is the memory model's
    guess when it falls inside the bracket, else doubling, then bisection."""
    lo, hi, guess, probes = 0, None, None, []
    while (hi is None or hi - lo > 1) and lo < limit:
        b = min(next_probe(lo, hi, guess), limit)
        rep = probe(b)
        fits = "does_not_fit" not in rep
        probes.append((b, rep))
        lo, hi = (b, hi) if fits else (lo, b)
        guess = memory_guess(rep, b, hbm_bytes) if fits else None
    return lo, probes


def fit_batch(config, target: str, *, limit: int = 1024, workdir: str | None = None,
              attention_chunks: int | None = None) -> dict:
    """The largest per-chip batch whose train step fits the chips of `target` (its memory
    analysis within the HBM and the compiler's own verdict; `search_batch`), each probe
    one compile, logged. Writes `workdir`/fit_batch.json."""
    parsed = accelerators.parse_target(target)
    if parsed.chip is None:
        raise ValueError(f"--fit_batch needs a target with a known memory per chip (a TPU "
                         f"slice or h100:N), not --target={target}")

    def probe(b):
        rep = run_compile(with_per_chip_batch(config, b), target, programs=("train_step",),
                          attention_chunks=attention_chunks, check=False)["train_step"]
        logging.info("fit_batch: per-chip batch %d %s (%s)", b, "does not fit" if
                     "does_not_fit" in rep else "fits", _probe_summary(rep, parsed))
        return rep

    largest, probes = search_batch(probe, parsed.chip.hbm_bytes, limit)
    result = {"target": parsed.spec, "config": _config_summary(config),
              "largest_per_chip_batch": largest, "limit": limit,
              "probes": [{"per_chip_batch": b, "fits": "does_not_fit" not in r,
                          **{k: r[k] for k in ("compile_seconds", "compile_cpu_seconds",
                                               "memory", "does_not_fit") if k in r}}
                         for b, r in probes]}
    logging.info("fit_batch: the largest per-chip batch on %s is %d (%d compiles)",
                 parsed.spec, largest, len(probes))
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "fit_batch.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


def _probe_summary(rep: dict, target) -> str:
    if "memory" not in rep:
        return rep["does_not_fit"]
    return (f"{rep['memory']['total_bytes'] / GIB:.2f} of {target.chip.hbm_bytes / GIB:.0f} GiB"
            f" per chip, {compile_time_line(rep)}")


def target_describe(target, devices) -> dict:
    d = {"spec": target.spec, "platform": target.platform, "devices": len(devices),
         "processes": len({dev.process_index for dev in devices}),
         "device_kind": devices[0].device_kind}
    if target.chip is not None:
        d.update(topology=target.topology_name, chips=target.num_chips,
                 hbm_bytes=target.chip.hbm_bytes, peak_bf16_flops=target.chip.bf16_flops,
                 hbm_bytes_per_s=target.chip.hbm_bytes_per_s, source=target.chip.source)
    return d


def _config_summary(config) -> dict:
    return {"model": config.model.name, "scale": int(config.scale),
            "batch_size": int(config.train.batch_size),
            "patch_size": int(config.train.patch_size),
            "compute_dtype": config.train.get("compute_dtype", "float32")}


def compile_time_line(r: dict) -> str:
    """'compiled in W s wall, C s CPU (tracing + lowering w s, c s CPU), code N MiB'."""
    line = f"compiled in {r['compile_seconds']} s wall"
    if "compile_cpu_seconds" in r:
        line += f", {r['compile_cpu_seconds']} s CPU"
    if "lower_seconds" in r:
        line += (f" (tracing + lowering {r['lower_seconds']} s, "
                 f"{r['lower_cpu_seconds']} s CPU)")
    return line + f", code {r['memory']['generated_code_bytes'] / 2**20:.1f} MiB"


def format_report(result: dict) -> str:
    t = result["target"]
    hbm = t.get("hbm_bytes")
    lines = [f"target {t['spec']}: {t['devices']} x {t['device_kind']}, "
             f"{t['processes']} host(s)" + (f", {hbm / GIB:.0f} GiB HBM per chip" if hbm else "")]
    if "attention" in result:
        lines.append(result["attention"])
    for name in PROGRAMS:
        if name not in result:
            continue
        r = result[name]
        what = (f"global batch {r['global_batch']}" if name == "train_step"
                else f"LR {'x'.join(map(str, r['lr_shape']))}")
        if "memory" not in r:
            lines.append(f"{name} ({what}): DOES NOT FIT: {r['does_not_fit']}")
            continue
        m, c, roof = r["memory"], r["cost"], r["roofline"]
        lines.append(f"{name} ({what}), per device: {compile_time_line(r)}")
        lines.append("  bytes: " + ", ".join(f"{k} {m[k + '_bytes'] / 2**20:.1f} MiB"
                                              for k in MEMORY_FIELDS + ("peak",)))
        fit = f" of {hbm / GIB:.0f} GiB ({100 * m['total_bytes'] / hbm:.0f}%)" if hbm else ""
        lines.append(f"  total {m['total_bytes'] / GIB:.2f} GiB{fit}")
        est = (f"; XLA's cost model: {c['xla_optimal_seconds'] * 1e3:.2f} ms"
               if "xla_optimal_seconds" in c else "")
        if c["flops"] is None:
            lines.append("  no cost analysis for this target (XLA:GPU without a device)")
        else:
            lines.append(f"  {c['flops'] / 1e9:.1f} GFLOP, {c['bytes_accessed'] / 1e9:.2f} "
                         f"GB accessed per call{est}")
        if roof:
            lines.append(f"  roofline >= {roof['seconds'] * 1e3:.2f} ms ({roof['bound']}-bound"
                         f"; compute {roof['compute_seconds'] * 1e3:.2f} ms at "
                         f"{roof['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16, memory "
                         f"{roof['memory_seconds'] * 1e3:.2f} ms at "
                         f"{roof['hbm_bytes_per_s'] / 1e9:.0f} GB/s)")
    return "\n".join(lines)
