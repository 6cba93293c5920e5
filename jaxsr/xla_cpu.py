"""XLA:CPU setting that jaxsr applies when it is imported, before JAX starts its backend.

On the jaxlib this project pins (0.10.x), XLA:CPU hands convolutions to YNNPACK library
fusions by default. Turning those off (`--xla_cpu_experimental_ynn_fusion_type=`, so
convolutions run on Eigen) made the convolution networks about 2x faster on a 2-core x86
CPU (`make bench` before/after: EDSR-baseline forward at 64x64 LR 150 -> 67 ms, RCAN 1710
-> 809 ms, EDSR-small train step 107 -> 61 ms; docs/performance.md;
`JAXSR_XLA_DEFAULTS=0 make bench` reproduces "before"). GPU and TPU compilations ignore
XLA:CPU flags.

The flag is added only for jaxlib versions where it was checked: XLA aborts the process on
a flag it does not know, and experimental flags get renamed. A flag the user already put
in XLA_FLAGS wins, and JAXSR_XLA_DEFAULTS=0 leaves XLA_FLAGS alone. Setting it after JAX
has initialised its CPU backend has no effect (jaxsr modules import JAX, so this runs
first unless the program used JAX before importing jaxsr).
"""
import importlib.metadata
import os

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
VERIFIED_JAXLIB = ("0.10.",)
OPT_OUT_ENV = "JAXSR_XLA_DEFAULTS"


def prefer_eigen_convolutions() -> bool:
    """Adds `--xla_cpu_experimental_ynn_fusion_type=` to XLA_FLAGS when it applies;
    returns whether it did."""
    if os.environ.get(OPT_OUT_ENV, "1") == "0":
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG_NAME in flags:
        return False
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    if not version.startswith(VERIFIED_JAXLIB):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{FLAG_NAME}=".strip()
    return True
