"""Which formulation of the LSH chunk attention a trace uses (config.model.attention_impl),
and a record of what was traced (--mode compile / info report it)."""
import contextlib
import importlib.util

from jaxsr import target_platform

# How the chunk attention runs (config.model.attention_impl): 'auto' picks per platform.
ATTENTION_IMPLS = ("auto", "xla", "pallas")
# Three formulations of the chunk attention, one result (tests/test_attention_sorted.py):
#   'looped'  today's `chunked.attend_chunks`: a few chunks per loop step gathered from
#             the [L, .] tables, gradients scatter-added back (fastest on a 2-core CPU:
#             docs/performance.md; the scatters are serial loops on a TPU);
#   'sorted'  `sorted_chunks`: tables gathered into sorted chunk order, look-around as
#             rolls, backward by inverse-permutation gathers: no scatter;
#   'pallas'  B's kernels (`jaxsr.attention.kernels`) on the same sorted tables.
FORMULATIONS = ("looped", "sorted", "pallas")
DESCRIPTIONS = {"looped": "XLA, looped chunks (scatter-add backward)",
                "sorted": "XLA, sorted chunk tables (scatter-free)",
                "pallas": "Pallas kernels on sorted chunk tables"}
_forced_formulation = [None]      # set by `use_formulation` (read at trace time)
_recorders = []                   # lists `record_formulations` appends to


@contextlib.contextmanager
def record_formulations():
    """Yields a list of the formulations of the LSH attentions traced within the block
    (--mode compile / info report which implementation ran)."""
    used = []
    _recorders.append(used)
    try:
        yield used
    finally:
        _recorders.remove(used)


def describe_formulations(used, impl: str) -> str:
    """"attention_impl='auto': sorted (XLA, sorted chunk tables (scatter-free))"."""
    ran = ", ".join(f"{f} ({DESCRIPTIONS[f]})" for f in sorted(set(used)))
    return f"LSH attention: attention_impl={impl!r} ran as {ran}"


@contextlib.contextmanager
def use_formulation(name: str | None):
    """Within the block every LSH attention traced uses formulation `name` whatever its
    attention_impl (experiments: the "today" rows of aot_table.py; tests on CPU)."""
    if name is not None and name not in FORMULATIONS:
        raise ValueError(f"formulation {name!r}: choose one of {FORMULATIONS}")
    before, _forced_formulation[0] = _forced_formulation[0], name
    try:
        yield
    finally:
        _forced_formulation[0] = before


def kernels_available() -> bool:
    return importlib.util.find_spec("jaxsr.attention.kernels") is not None


def resolve_impl(impl: str = "auto", platform: str | None = None) -> str:
    """The formulation (FORMULATIONS) that attention_impl `impl` runs on `platform`
    (None: `target_platform.current()`, so a deviceless TPU compile gets the TPU choice).

    'pallas': the kernels. 'xla': 'sorted' on TPU/GPU; on CPU 'looped', measured faster
    there (docs/performance.md). 'auto': as 'xla', except 'pallas' on TPU once the
    kernels exist."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r}: choose one of {ATTENTION_IMPLS} "
                         "(config.model.attention_impl)")
    if _forced_formulation[0] is not None:
        return _forced_formulation[0]
    platform = platform or target_platform.current()
    if impl == "pallas":
        return "pallas"
    if platform == "cpu":
        return "looped"
    if impl == "auto" and platform == "tpu" and kernels_available():
        return "pallas"
    return "sorted"


def note_traced(formulation: str) -> None:
    """Called by each traced LSH attention: appends to the active records."""
    for used in _recorders:
        used.append(formulation)
