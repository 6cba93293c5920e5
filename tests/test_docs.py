"""Docs that cannot rot silently: every `python -m jaxsr...` command in a code block of
README.md or docs/*.md names a module that exists, with flags it defines and `--config.*`
keys that exist in the config it names (parsed, never run), and every relative link in
them (README, CHANGELOG, docs/) points at a file that exists, and at a heading that exists
when it names one.

absl entry points (jaxsr.main, jaxsr.upscale, jaxsr.convert) are parsed by their own
FlagValues in one subprocess per module (their flag definitions would clash in one
process); `--config` loads the named config file and applies the overrides, so an unknown
key fails. argparse tools (jaxsr.tools.*) are parsed by the parser their main() builds,
caught before it parses anything.
"""
import argparse
import importlib
import importlib.util
import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED = [*DOCS, REPO / "CHANGELOG.md"]
ABSL_MODULES = {"jaxsr.main": "jaxsr.main", "jaxsr.upscale": "jaxsr.upscale",
                "jaxsr.convert": "jaxsr.convert.__main__"}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
COMMAND = re.compile(r"python3?\s+-m\s+(jaxsr[\w.]*)(.*)")


def code_lines(text: str) -> list[str]:
    """Logical lines of the fenced code blocks (backslash continuations joined)."""
    lines = []
    for block in FENCE.findall(text):
        lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    return lines


def command_tokens(rest: str) -> list[str]:
    """The arguments after the module, up to a comment or a shell operator."""
    lexer = shlex.shlex(rest, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = []
    try:
        for tok in lexer:
            if tok and set(tok) <= set(";&|<>"):
                break
            tokens.append(re.sub(r"\$\{?\w+\}?", "0", tok))   # a shell variable: some value
    except ValueError:               # an unclosed quote: the outer quote of e.g. ssh --command
        return command_tokens(rest.rsplit('"', 1)[0])
    return tokens


def documented_commands() -> list[tuple[str, str, list[str]]]:
    out = []
    for path in DOCS:
        for line in code_lines(path.read_text()):
            for m in COMMAND.finditer(line):
                out.append((path.relative_to(REPO).as_posix(), m.group(1),
                            command_tokens(m.group(2))))
    return out


COMMANDS = documented_commands()


def test_docs_have_commands():
    modules = {m for _, m, _ in COMMANDS}
    assert {"jaxsr.main", "jaxsr.upscale", "jaxsr.convert", "jaxsr.tools.data",
            "jaxsr.tools.prepare"} <= modules, modules


def test_every_documented_module_exists():
    missing = [(f, m) for f, m, _ in COMMANDS if importlib.util.find_spec(m) is None]
    assert not missing, missing


# Runs in a subprocess per absl module: parses each argv with the module's flags.
ABSL_PARSER = r"""
import importlib, json, sys
from absl import flags
importlib.import_module(sys.argv[1])
strip_config = sys.argv[2] == "1"
errors = []
for where, argv in json.loads(sys.stdin.read()):
    if strip_config:     # overrides of a workdir's config.json, checked when run
        argv = [a for a in argv if not a.startswith("--config.")]
    # config_flags reads sys.argv for the overrides and defines one flag per override.
    sys.argv = ["prog", *argv]
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(sys.argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            flags.FLAGS.config      # loads the config file with the overrides applied
    except Exception as e:
        errors.append(f"{where}: {' '.join(argv)}: {type(e).__name__}: {e}")
print(json.dumps(errors))
"""


def test_absl_commands_parse():
    procs = []
    for module, import_name in ABSL_MODULES.items():
        argvs = [(f"{f}: python -m {m}", toks) for f, m, toks in COMMANDS if m == module]
        if not argvs:
            continue
        p = subprocess.Popen([sys.executable, "-c", ABSL_PARSER, import_name,
                              "1" if module == "jaxsr.upscale" else "0"],
                             cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
        procs.append((module, p, json.dumps(argvs)))
    errors = []
    for module, p, payload in procs:
        try:
            out, err = p.communicate(payload, timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=10)
            raise
        assert p.returncode == 0, (module, err[-2000:])
        errors += json.loads(out.strip().splitlines()[-1])
    assert not errors, "\n".join(errors)


class _Caught(Exception):
    pass


def tool_parser(module: str) -> argparse.ArgumentParser:
    """The parser an argparse tool's main() builds, caught at its parse_args call."""
    mod = importlib.import_module(module)
    original = argparse.ArgumentParser.parse_args

    def catch(self, *args, **kwargs):
        raise _Caught(self)

    argparse.ArgumentParser.parse_args = catch
    try:
        mod.main([])
    except _Caught as c:
        return c.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{module}.main() did not build an argparse parser")


@pytest.mark.parametrize("where,module,argv",
                         [c for c in COMMANDS if c[1] not in ABSL_MODULES
                          and importlib.util.find_spec(c[1]) is not None],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_tool_commands_parse(where, module, argv):
    parser = tool_parser(module)
    parser.exit_on_error = False
    for sub in parser._subparsers._group_actions if parser._subparsers else ():
        for p in sub.choices.values():
            p.exit_on_error = False
    try:
        parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:
        pytest.fail(f"{where}: python -m {module} {' '.join(argv)}: {e}")


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {github_anchor(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_relative_links_resolve():
    broken = []
    for path in LINKED:
        text = FENCE.sub("", path.read_text())
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading #{anchor} in {dest.name}")
    assert not broken, "\n".join(broken)
