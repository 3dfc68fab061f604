"""The README and the docs/ pages say what the code does.

Checked here (fast: no network, no Label Studio, no model): the README's size and its two commands; the
configuration table against the variables the code reads and their defaults; every ``glus`` / ``glus-backend``
command line (subcommands and options) against the real argparse parsers; the labeling configs marked as served;
every JSON block, and the prediction examples against the code that makes them; the repository layout page; and
every relative link and #anchor.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
CONFIGURATION = ROOT / "docs" / "configuration.md"
LAYOUT = ROOT / "docs" / "layout.md"

SERVED_MARK = "served labeling config"  # <!-- served labeling config --> on the line before an ```xml block
EXAMPLE_MARK = re.compile(r"example: (\w+)")  # <!-- example: frame_sequence_results --> before a ```json block

# Variables the code reads that users do not set (torchrun sets them for each process it starts).
NOT_SETTINGS = {"WORLD_SIZE", "RANK", "LOCAL_RANK"}


# --------------------------------------------------------------------------------------------- markdown helpers
class Block:
    """A fenced code block: its info string (language), its text, and the HTML comment on the line before it."""

    def __init__(self, page: Path, line: int, info: str, text: str, mark: str) -> None:
        self.page, self.line, self.info, self.text, self.mark = page, line, info, text, mark

    def __repr__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def split_page(page: Path) -> tuple[list[Block], str]:
    """The page's fenced code blocks, and its prose (the text outside them)."""
    blocks: list[Block] = []
    prose: list[str] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"\s*```(.*)$", lines[i])
        if not opening:
            prose.append(lines[i])
            i += 1
            continue
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        comment = re.fullmatch(r"<!--\s*(.*?)\s*-->", before)
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{page.name}:{start + 1}: code block never closed"
        i += 1
        mark = comment.group(1) if comment else ""
        blocks.append(Block(page, start + 1, opening.group(1).strip(), "\n".join(body), mark))
    return blocks, "\n".join(prose)


def inline_code(prose: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to '-'."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    _, prose = split_page(page)
    seen: dict[str, int] = {}
    out = set()
    for match in re.finditer(r"^#{1,6} (.+)$", prose, re.MULTILINE):
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    _, prose = split_page(page)
    prose = re.sub(r"`[^`\n]+`", "", prose)
    return re.findall(r"\]\(([^)\s]+)\)", prose)


# ------------------------------------------------------------------------------------------------------- README
def test_readme_is_a_front_door_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move reference material to docs/"
    blocks, prose = split_page(README)
    setup = prose.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    commands = [b for b in blocks if b.info == "bash" and re.search(r"^scripts/demo\.sh\b", b.text, re.M)]
    assert commands, "the set-up section's code block with scripts/demo.sh is gone"
    first = [re.sub(r"\s+#.*", "", line).strip() for line in commands[0].text.splitlines()]
    assert [c for c in first if c] == ["scripts/demo.sh", "scripts/test.sh"]
    for script, does in (("demo.sh", r'glus-backend"? demo "\$@"'), ("test.sh", r"-m pytest")):
        path = ROOT / "scripts" / script
        assert path.is_file() and os.access(path, os.X_OK), f"scripts/{script} is missing or not executable"
        assert re.search(does, path.read_text()), f"scripts/{script} no longer does what the README says"
    # the demo options the set-up section lists are options of `glus-backend demo`
    listed = set(re.findall(r"--[a-z][a-z0-9-]*", setup.split("Options:", 1)[1].split("\n\n", 1)[0]))
    assert listed and listed <= set(subcommand_options("glus-backend", "demo")), listed


def test_readme_links_every_docs_page():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links(README)}
    orphans = [page.name for page in DOCS if page.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


# ------------------------------------------------------------------------------------------------ configuration
def _string(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _value(node: ast.AST) -> str | None:
    """A default as the table writes it: `str(2 * 1024**3)` -> '2147483648', True -> 'true'."""
    try:
        value = eval(compile(ast.Expression(node), "<default>", "eval"), {"__builtins__": {}, "str": str})
    except Exception:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def _is_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", "") == "os"


def python_env_reads(path: Path) -> dict[str, set[str]]:
    """Variables a Python file reads (``os.environ.get``, ``os.environ[...]``, ``os.getenv``, settings' ``_env``),
    each with the defaults given there."""
    tree = ast.parse(path.read_text())
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    found: dict[str, set[str]] = {}

    def add(names, default: ast.AST | None) -> None:
        for name in names:
            if name:
                found.setdefault(name, set())
                if default is not None and (value := _value(default)) is not None:
                    found[name].add(value)

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_environ(node.value):
            add([_string(node.slice, constants)], None)
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "get"
            and _is_environ(func.value)
            or (isinstance(func, ast.Attribute) and func.attr == "getenv" and getattr(func.value, "id", "") == "os")
        ):
            add([_string(node.args[0], constants)], node.args[1] if len(node.args) > 1 else None)
        elif isinstance(func, ast.Name) and func.id == "_env":
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            add([_string(a, constants) for a in node.args], default)
        elif isinstance(func, ast.Name) and func.id == "_bool" and len(node.args) == 2:  # _bool(_env(NAME), True)
            inner = node.args[0]
            if isinstance(inner, ast.Call) and getattr(inner.func, "id", "") == "_env":
                add([_string(a, constants) for a in inner.args], node.args[1])
    return found


def shell_env_reads(path: Path) -> dict[str, set[str]]:
    """``${NAME:-default}`` in shell scripts and the compose file (defaults that name other variables are left out)."""
    found: dict[str, set[str]] = {}
    for name, default in re.findall(r"\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}", path.read_text()):
        found.setdefault(name, set()).update({default} if "$" not in default else set())
    return found


def code_env_reads() -> tuple[dict[str, set[str]], set[str]]:
    """Every variable the code reads with the defaults it uses; and the variables only bench/ reads (whose defaults
    are the benchmarks' own, e.g. a Redis database of their own)."""
    reads: dict[str, set[str]] = {}
    files = [*(ROOT / "glus_backend").rglob("*.py"), *(ROOT / "model").rglob("*.py"), ROOT / "_wsgi.py"]
    for path in files:
        for name, defaults in python_env_reads(path).items():
            reads.setdefault(name, set()).update(defaults)
    for path in [*(ROOT / "scripts").glob("*.sh"), ROOT / "docker" / "docker-compose.yml"]:
        for name, defaults in shell_env_reads(path).items():
            reads.setdefault(name, set()).update(defaults)
    bench_only = set()
    for path in (ROOT / "bench").iterdir():
        scan = {".py": python_env_reads, ".sh": shell_env_reads}.get(path.suffix)
        for name in scan(path) if scan else ():
            if name not in reads:
                bench_only.add(name)
                reads[name] = set()
    return reads, bench_only


def configuration_table() -> dict[str, set[str]]:
    """docs/configuration.md's table: variable -> the backticked values of its default cell."""
    _, prose = split_page(CONFIGURATION)
    rows = [line for line in prose.splitlines() if line.startswith("|")]
    assert sum(1 for row in rows if re.match(r"\|\s*-", row)) == 1, "docs/configuration.md should hold one table"
    table: dict[str, set[str]] = {}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = [n for n in re.findall(r"`([^`]+)`", cells[0]) if re.fullmatch(r"[A-Z][A-Z0-9_]*", n)]
        assert names, f"a configuration row without a variable: {row}"
        for name in names:
            assert name not in table, f"{name} is in the configuration table twice"
            table[name] = set(re.findall(r"`([^`]+)`", cells[1]))
    return table


def test_configuration_table_lists_exactly_the_variables_the_code_reads():
    reads, _ = code_env_reads()
    assert NOT_SETTINGS <= set(reads), "NOT_SETTINGS names a variable the code no longer reads"
    in_code = set(reads) - NOT_SETTINGS
    table = configuration_table()
    assert {"LABEL_STUDIO_URL", "GLUS_CHECKPOINT", "REDIS_URL", "GLUS_TRAIN_EVERY"} <= in_code  # the scan works
    undocumented, unread = sorted(in_code - set(table)), sorted(set(table) - in_code)
    assert not undocumented, f"read by the code but not in docs/configuration.md: {undocumented}"
    assert not unread, f"in docs/configuration.md but read nowhere: {unread}"


def test_configuration_table_defaults_are_the_codes():
    reads, bench_only = code_env_reads()
    table = configuration_table()
    wrong = {
        name: (sorted(defaults), sorted(table[name]))
        for name, defaults in reads.items()
        if name in table and name not in bench_only and not defaults <= table[name]
    }
    assert not wrong, f"defaults in the code vs the table: {wrong}"


# -------------------------------------------------------------------------------------------------- CLI commands
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from glus_backend.cli import build_parser as backend_parser
    from model.cli import build_parser as model_parser

    return {"glus-backend": backend_parser(), "glus": model_parser()}


PARSERS: dict[str, argparse.ArgumentParser] = {}


def subcommand_options(program: str, *path: str) -> list[str]:
    """Option strings of ``program path...`` (e.g. ``glus synthetic generate``), global options included."""
    PARSERS.update(PARSERS or _parsers())
    parser = PARSERS[program]
    options = list(parser._option_string_actions)
    for name in path:
        if program == "glus" and name == "synthetic":  # hands its arguments to the synthetic benchmark's own parser
            from model.synthetic.cli import _parser as synthetic_parser

            parser = synthetic_parser()
            options += list(parser._option_string_actions)
            continue
        choices = _subparsers(parser)
        assert name in choices, f"`{program} {' '.join(path)}`: no subcommand {name!r} (has: {sorted(choices)})"
        parser = choices[name]
        options += list(parser._option_string_actions)
    return options


def command_lines() -> list[tuple[str, str]]:
    """(where, command line) for every shell block line and inline code span of the README and docs/ pages."""
    out = []
    for page in PAGES:
        blocks, prose = split_page(page)
        for block in blocks:
            if block.info in ("bash", "sh", "shell"):
                text = re.sub(r"\\\n\s*", " ", block.text)  # continuation lines
                for line in text.splitlines():
                    out.append((repr(block), re.sub(r"(^|\s)#.*", "", line)))
        out += [(page.name, span) for span in inline_code(prose)]
    return out


def invocations() -> list[tuple[str, str, list[str]]]:
    """(where, program, arguments) of every `glus ...`, `glus-backend ...` or `scripts/demo.sh ...` named."""
    found = []
    for where, line in command_lines():
        for segment in re.split(r"\s+(?:&&|\|\||\||&)(?:\s+|$)|;|\$\(|\)", line):
            try:
                tokens = shlex.split(segment)
            except ValueError:
                tokens = segment.split()
            for i, token in enumerate(tokens):
                name = token.rsplit("/", 1)[-1]
                if name in ("glus", "glus-backend") and i + 1 < len(tokens):
                    found.append((where, name, tokens[i + 1 :]))
                elif token.endswith("scripts/demo.sh"):
                    found.append((where, "glus-backend", ["demo", *tokens[i + 1 :]]))
    return found


def test_every_command_named_in_the_docs_is_real():
    seen = set()
    for where, program, args in invocations():
        path = []
        while args and re.fullmatch(r"[a-z][a-z-]*", args[0]) and (not path or path == ["synthetic"]):
            path.append(args.pop(0))
        if not path:
            continue  # e.g. `glus-backend <subcommand>` or `glus --help`
        options = subcommand_options(program, *path)
        seen.add(f"{program} {path[0]}")
        for token in args:
            flag = token.strip("[]").split("=", 1)[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", flag):
                assert flag in options, f"{where}: `{program} {' '.join(path)}` has no option {flag}"
    expected = {"glus segment", "glus train", "glus synthetic", "glus-backend import-videos", "glus-backend demo"}
    assert expected <= seen, f"commands the docs should show: {sorted(expected - seen)}"


# ----------------------------------------------------------------------------------- labeling configs and JSON
def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in split_page(page)[0]]


def test_served_labeling_configs_parse():
    from glus_backend.label_config import parse_label_config

    configs = [b for b in all_blocks() if b.info == "xml" and b.text.lstrip().startswith("<View")]
    unmarked = [b for b in configs if b.mark != SERVED_MARK]
    assert not unmarked, f"labeling configs not marked <!-- {SERVED_MARK} -->: {unmarked}"
    assert len(configs) >= 3
    for block in configs:
        parse_label_config(block.text)  # raises UnsupportedLabelConfig naming what is missing


def test_walkthrough_config_takes_its_expressions_from_the_label_hints():
    from glus_backend.label_config import parse_label_config
    from glus_backend.prompts import extract_prompts

    config = next(b for b in split_page(README)[0] if b.mark == SERVED_MARK).text
    assert '<Header value="$expressions_text"/>' in config
    served = parse_label_config(config)
    hints = [(o.hint, o.value) for o in served.label_options()]
    assert hints and all(hint for hint, _ in hints), "every label of the walkthrough's config needs a hint"
    prompts = extract_prompts({served.value_key: ["/data/upload/1/00000.jpg"]}, served)
    assert [(p.expression, p.label) for p in prompts] == hints


def test_json_blocks_parse():
    blocks = [b for b in all_blocks() if b.info == "json"]
    assert blocks
    for block in blocks:
        try:
            json.loads(block.text)
        except json.JSONDecodeError as exc:
            pytest.fail(f"{block}: {exc}")


def _example_inputs():
    from glus_backend.results import ObjectTrack

    square = np.zeros((8, 8), bool)
    square[2:6, 2:6] = True
    frames = [ObjectTrack(label="Object", expression="the dog", masks=[square, None], scores=[0.9, None])]
    video = [ObjectTrack(label="Object", expression="the dog", masks=[square, square, None], scores=[0.9, 0.7, None])]
    return frames, video


def test_prediction_examples_are_what_the_code_writes():
    """docs/formats.md's examples, rebuilt from the inputs its text describes."""
    from glus_backend.label_config import parse_label_config
    from glus_backend.results import frame_sequence_results, prediction, video_rectangle_results

    blocks, _ = split_page(ROOT / "docs" / "formats.md")
    examples = {m.group(1): json.loads(b.text) for b in blocks if (m := EXAMPLE_MARK.fullmatch(b.mark))}
    configs = {}
    for block in all_blocks():
        if block.mark == SERVED_MARK and block.page.name == "label-studio.md":
            config = parse_label_config(block.text)
            configs.setdefault(config.kind, config)
    frames, video = _example_inputs()
    built = {
        "frame_sequence_results": prediction(
            frame_sequence_results(frames, configs["frames"], 8, 8), 0.9, "glus-tiny-1a2b3c4d"
        ),
        "video_rectangle_results": video_rectangle_results(video, configs["video"], 3, 25.0),
    }
    assert set(examples) == set(built)
    for name, example in examples.items():
        assert example == built[name], f"docs/formats.md's {name} example is not what the code writes"


# ------------------------------------------------------------------------------------------- layout and links
def test_layout_names_every_module():
    text = LAYOUT.read_text()
    missing = []
    for package in ("model", "glus_backend"):
        for path in sorted((ROOT / package).iterdir()):
            is_module = path.suffix == ".py" and path.name != "__init__.py"
            is_package = (path / "__init__.py").is_file()
            name = path.name if is_module else f"{path.name}/"
            if (is_module or is_package) and not re.search(rf"(?<![\w/]){re.escape(name)}", text):
                missing.append(f"{package}/{name}")
    assert not missing, f"docs/layout.md does not name: {missing}"


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
                broken.append(f"{page.name}: {target} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_slug_follows_github():
    assert slug("Real scale: glus-7b on this CPU") == "real-scale-glus-7b-on-this-cpu"
    assert slug("Learning from corrections (human in the loop)") == "learning-from-corrections-human-in-the-loop"
    assert slug("The `glus` CLI") == "the-glus-cli"
    assert slug("Label Studio's own settings") == "label-studios-own-settings"
