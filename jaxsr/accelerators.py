"""Accelerator targets for ahead-of-time compilation (`--mode compile --target ...`).

A target names a TPU slice by its topology ("v5e:2x4", "v4:2x2x4") or its Google Cloud
accelerator type ("v5litepod-8", "v4-32", "v6e-8", "v5p-16"), or this machine ("cpu").
`parse_target` maps it to the arguments of libtpu's deviceless topology
(`jax.experimental.topologies.get_topology_desc`) plus the chip's published limits, which
`jaxsr.aot` uses for the fits-in-HBM check and the roofline bound.

Cloud TPU names count TensorCores for v4/v5p (2 per chip, used as one "megacore" device:
v4-32 = 16 chips) and chips for v5e/v6e (v5litepod-8 = 8 chips).
"""
import dataclasses
import re
from typing import Optional

GIB = 2 ** 30

# Published per-chip peaks (Google Cloud TPU system-architecture pages, "Specifications").
# Google publishes bf16 (and int8) peaks only: f32 matmuls run on the bf16 MXU in several
# passes, so the bf16 peak also bounds f32 throughput from above (the roofline is then a
# looser, still valid, lower bound on step time).
#   v4:  https://cloud.google.com/tpu/docs/v4   275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s
#   v5e: https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s
#   v5p: https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16, 95 GB HBM2e, 2765 GB/s
#   v6e: https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16, 32 GB HBM, 1640 GB/s
# HBM sizes are taken as GiB (the memory XLA can allocate is what the runtime reports;
# the compile-time check uses these capacities as the limit).


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str                 # topology prefix, e.g. "v5e"
    device_kind: str          # jax Device.device_kind of the compile-only devices
    hbm_bytes: int
    bf16_flops: float         # peak FLOP/s per chip
    hbm_bytes_per_s: float
    source: str
    megacore: bool = False    # 2 TensorCores per chip as one device (GCP names count cores)
    dims: int = 2             # torus dimensions of the topology name


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275e12, 1200e9,
               "https://cloud.google.com/tpu/docs/v4", megacore=True, dims=3),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, 197e12, 819e9,
                "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 459e12, 2765e9,
                "https://cloud.google.com/tpu/docs/v5p", megacore=True, dims=3),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, 918e12, 1640e9,
                "https://cloud.google.com/tpu/docs/v6e"),
}
# NVIDIA H100 SXM (https://www.nvidia.com/en-us/data-center/h100/, datasheet: 989 TFLOP/s
# dense bf16, 80 GB HBM3 at 3.35 TB/s). Compiled for without a GPU through XLA's GPU target
# description (needs jax-cuda12-plugin/-pjrt of the installed jax); the device description
# below is the H100's as XLA reports it (jax-ml/jax issue 28376).
H100 = Chip("h100", "NVIDIA H100 80GB HBM3", 84929347584, 989e12, 3.35e12,
            "https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM datasheet)", dims=1)
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448 cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
# Google Cloud accelerator-type prefixes -> chip.
GCP_PREFIXES = {"v4": "v4", "v5litepod": "v5e", "v5e": "v5e", "v5p": "v5p", "v6e": "v6e"}
# libtpu's topology prefix for each chip ("v5p" slices are "v5:AxBxC").
TOPOLOGY_PREFIX = {"v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Target:
    spec: str                      # what the user asked for
    platform: str                  # "tpu", "gpu" or "cpu"
    chip: Optional[Chip] = None
    shape: tuple = ()              # chips along each torus axis
    hosts: int = 1

    @property
    def topology_name(self) -> str:
        if self.platform == "gpu":
            return f"1x1x{self.num_chips}"      # slices x hosts x GPUs
        return f"{TOPOLOGY_PREFIX[self.chip.name]}:{'x'.join(map(str, self.shape))}"

    @property
    def num_chips(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def chips_per_host_bounds(self) -> tuple:
        """Chips of one host along each axis: 2x2x1 (4 chips) per host, except the
        single-host 8-chip v5e/v6e machines (2x4)."""
        if self.chip.dims == 2 and self.num_chips == 8:
            return (2, 4, 1)
        if self.num_chips < 4:
            return tuple(self.shape) + (1,) * (3 - len(self.shape))
        return (2, 2, 1)

    def topology_kwargs(self) -> dict:
        """Keyword arguments of `topologies.get_topology_desc` for this slice."""
        if self.platform == "gpu":     # one host of n GPUs
            return {"platform": "cuda", "target_config": H100_TARGET_CONFIG,
                    "topology": self.topology_name}
        kw = {"topology_name": self.topology_name, "platform": "tpu",
              "chips_per_host_bounds": self.chips_per_host_bounds()}
        if self.chip.megacore:
            kw["chip_config_name"] = "megacore"
        # Wraparound links: 3D slices from 4x4x4 up are full tori; 2D sides of 16 wrap.
        if self.chip.dims == 3:
            kw["wrap"] = (min(self.shape) >= 4,) * 3
        else:
            kw["wrap"] = tuple(s >= 16 for s in self.shape) + (False,)
        return kw


def grid_for(chips: int, dims: int) -> tuple:
    """The slice shape Cloud TPU uses for a power-of-two chip count: start from 2x2x1 (3D)
    or 1x1 (2D) and double the last of the smallest sides (v4: 4 -> 2x2x1, 16 -> 2x2x4, 64 -> 4x4x4;
    v5e: 8 -> 2x4, 32 -> 4x8)."""
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"{chips} chips: the GCP name maps only power-of-two chip counts to "
                         "a topology; give the topology itself, e.g. v5e:4x8")
    if dims == 3 and chips < 4:
        raise ValueError(f"{chips} chips: the smallest v4/v5p slice has 4 chips (v4-8, v5p-8)")
    shape = [2, 2, 1] if dims == 3 else [1] * dims
    while _prod(shape) < chips:
        low = min(shape)
        i = max(k for k, s in enumerate(shape) if s == low)
        shape[i] *= 2
    return tuple(shape)


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def _hosts(chip: Chip, shape: tuple) -> int:
    n = _prod(shape)
    if chip.dims == 2 and n <= 8:
        return 1
    return max(1, n // 4)


def parse_target(spec: str) -> Target:
    """'cpu', a topology ('v5e:2x4', 'v4:2x2x4', 'v5p:2x2x2') or a GCP accelerator type
    ('v5litepod-8', 'v4-32', 'v6e-8', 'v5p-16')."""
    s = spec.strip().lower()
    if s == "cpu":
        return Target(spec, "cpu")
    m = re.fullmatch(r"h100(?:[:-](\d+))?", s)
    if m:
        n = int(m.group(1) or 1)
        if not 1 <= n <= 8:
            raise ValueError(f"--target={spec}: one host of 1 to 8 H100s (h100, h100:8)")
        return Target(spec, "gpu", H100, (n,), 1)
    m = re.fullmatch(r"(v4|v5e|v5p|v5|v6e):(\d+(?:x\d+)*)", s)
    if m:
        name = "v5p" if m.group(1) == "v5" else m.group(1)
        chip = CHIPS[name]
        shape = tuple(int(x) for x in m.group(2).split("x"))
        if len(shape) != chip.dims or min(shape) < 1:
            raise ValueError(f"--target={spec}: a {name} topology has {chip.dims} sides, "
                             f"e.g. {name}:{'x'.join(['2'] * chip.dims)}")
        return Target(spec, "tpu", chip, shape, _hosts(chip, shape))
    m = re.fullmatch(r"(v4|v5litepod|v5e|v5p|v6e)-(\d+)", s)
    if m:
        chip = CHIPS[GCP_PREFIXES[m.group(1)]]
        n = int(m.group(2))
        if chip.megacore:
            if n % 2:
                raise ValueError(f"--target={spec}: {m.group(1)} names count TensorCores "
                                 "(2 per chip), so the number must be even, e.g. v4-8")
            n //= 2
        shape = grid_for(n, chip.dims)
        return Target(spec, "tpu", chip, shape, _hosts(chip, shape))
    raise ValueError(f"--target={spec!r} is not a known target: use cpu, a TPU topology "
                     "(v4:2x2x1, v5e:2x4, v5p:2x2x2, v6e:4x4), a Cloud TPU type (v4-8, "
                     "v4-32, v5litepod-8, v5p-16, v6e-8) or h100[:N] (N GPUs of one host)")
