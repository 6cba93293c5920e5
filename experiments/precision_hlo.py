"""Which precision a float32 convolution, attention matmul and LSH hash projection get in
the program a TPU compiles, per config.train.matmul_precision (docs/precision.md).

  python experiments/precision_hlo.py      # -> experiments/results/precision_hlo_v5e.txt

A tiny program (one 3x3 conv, a score matmul and the value matmul of a dense attention,
`lsh.hash_codes`) is compiled for one v5e chip (libtpu, deviceless) inside
`precision.matmul_precision_scope(name)`; the script prints the convolution / dot lines
of the optimized HLO (the TPU compiler writes dots as `convolution`) with their
`operand_precision`, and the precision of each dot in the StableHLO it was given.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsr import aot  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                   "precision_hlo_v5e.txt")


def program(x, w, q, v, rot):
    import jax
    import jax.numpy as jnp
    from jaxsr.attention import lsh
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    scores = jnp.einsum("lc,mc->lm", q, q)
    return y, scores @ v, lsh.hash_codes(q, rot, 8, lsh.CROSS_POLYTOPE)


def hlo_lines(name: str) -> list[str]:
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding
    from jaxsr import accelerators, precision, target_platform
    device = aot.target_devices(accelerators.parse_target("v5e:2x2"))[0]
    spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32,   # noqa: E731
                                           sharding=SingleDeviceSharding(device))
    args = (spec(1, 16, 16, 8), spec(3, 3, 8, 8), spec(256, 16), spec(256, 8), spec(16, 2, 4))
    with target_platform.tracing_for("tpu"), precision.matmul_precision_scope(name):
        lowered = jax.jit(program).lower(*args)
        text = lowered.compile().as_text()
    squeeze = lambda line: re.sub(r"\s+", " ", line.strip())   # noqa: E731
    out = [f"== config.train.matmul_precision={name!r}", "optimized TPU HLO:"]
    for line in text.splitlines():
        if re.search(r"= \S+ convolution\(", line):
            meta = re.search(r'op_name="([^"]*)"', line)
            prec = re.search(r"operand_precision=\{[^}]*\}", line)
            out.append(f"  {line.split('=')[0].strip()} = {line.split('=')[1].split('{')[0].strip()}"
                       f" {prec.group(0) if prec else '(no operand_precision: DEFAULT)'}"
                       f"  [{meta.group(1) if meta else ''}]")
    out.append("StableHLO dot_general precision:")
    out += ["  " + squeeze(line)[:200] for line in lowered.as_text().splitlines()
            if "dot_general" in line and "precision" in line]
    return out


def main():
    aot.prepare_host()
    import jax
    import libtpu
    lines = [f"jax {jax.__version__}, libtpu {getattr(libtpu, '__version__', '?')}, "
             "target v5e (deviceless)"]
    for name in ("default", "high", "highest"):
        lines += hlo_lines(name)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
