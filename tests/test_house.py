"""The house rules that code review would otherwise have to remember: imports in jaxsr/
and experiments/ run one way (no circles, lazy imports inside functions included), and
every subprocess a test starts is bounded in time."""
import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def module_files(*packages) -> dict[str, pathlib.Path]:
    mods = {}
    for pkg in packages:
        for p in (REPO / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


def imported_modules(name: str, path: pathlib.Path, known) -> set[str]:
    """The modules of `known` that `path` imports anywhere (top level or in a function).
    `from pkg import sub` counts as importing pkg.sub when that is a module, else pkg."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            out.update(s for s in subs if s in known)
            if any(s not in known for s in subs):
                out.add(base)
    return {m for m in out if m in known and m != name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on_stack.discard(comp[-1])
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    mods = module_files("jaxsr", "experiments")
    graph = {m: imported_modules(m, p, mods) for m, p in mods.items()}
    assert import_cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    # the check above is only worth something if it can fail
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def unbounded_subprocess_calls(path: pathlib.Path) -> list[str]:
    """subprocess.run/call/check_call/check_output calls without timeout=, and
    communicate()/wait() calls without a timeout, in one file."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f = node.func
        kwargs = {k.arg for k in node.keywords}
        if (isinstance(f.value, ast.Name) and f.value.id == "subprocess"
                and f.attr in ("run", "call", "check_call", "check_output")
                and "timeout" not in kwargs):
            bad.append(f"{path.name}:{node.lineno} subprocess.{f.attr}")
        if f.attr in ("communicate", "wait") and not node.args and "timeout" not in kwargs \
                and not (isinstance(f.value, ast.Name) and f.value.id in ("mngr", "self")):
            bad.append(f"{path.name}:{node.lineno} .{f.attr}()")
    return bad


def test_every_test_subprocess_has_a_timeout():
    bad = [b for p in sorted((REPO / "tests").rglob("*.py"))
           for b in unbounded_subprocess_calls(p)]
    assert bad == [], "give these a timeout= so that a hang fails the test instead of CI"


def test_timeout_check_sees_a_missing_timeout(tmp_path):
    f = tmp_path / "t.py"
    f.write_text("import subprocess\nsubprocess.run(['true'])\np.wait()\n"
                 "subprocess.run(['true'], timeout=5)\np.wait(timeout=5)\n")
    assert unbounded_subprocess_calls(f) == ["t.py:2 subprocess.run", "t.py:3 .wait()"]


@pytest.mark.parametrize("pkg", ["jaxsr", "experiments"])
def test_files_stay_readable(pkg):
    """~450 lines: past that, a file holds more than one idea (split along them)."""
    long = {str(p.relative_to(REPO)): n for p in (REPO / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
