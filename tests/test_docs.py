"""The documentation says what the code does.

For README.md, datasets/README.md, benchmarks/README.md and every page under docs/: each
relative link and anchor resolves; each config key named exists in the defaults; each file
path of the repository named exists; each ``--option`` named next to a tool is an option of
that tool; each ``file.py:LINE`` and quoted "section" reference resolves. The generated pages
(docs/config_keys.md, docs/ood_methods.md) are what ``tools/make_docs.py`` writes, and the
config reference names every key that vos_det adds. (tests/test_readme_commands.py runs the
commands of the same pages.)
"""
import re
import runpy
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from detectron2.config import get_cfg

from vos_det.config import default_config
from vos_det.config.renamed_keys import RENAMED_KEYS
from vos_det.reference_docs import config_keys, config_reference, write_generated_pages

REPO = Path(__file__).resolve().parent.parent
DOCS = [
    REPO / "README.md",
    REPO / "datasets" / "README.md",
    REPO / "benchmarks" / "README.md",
    *sorted((REPO / "docs").rglob("*.md")),
]
DOC_IDS = [str(path.relative_to(REPO)) for path in DOCS]

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`([^`]+)`")
# A config key: an upper-case top-level node of detectron2's config and upper-case parts.
_CONFIG_KEY = re.compile(
    r"(?<![\w.])((?:MODEL|SOLVER|DATASETS|TEST|INPUT|DATALOADER)(?:\.[A-Z0-9_]+)+)(\.?\*)?"
)
# How the docs quote a wrong key in an example error message.
_WRONG_KEY_EXAMPLE = "unknown config key "
# A path of the repository's own files (not outputs or data): top folder, then a file or folder.
_REPO_PATH = re.compile(r"(?<![\w./-])((?:vos_det|tools|configs|benchmarks|tests|docs|datasets)/[\w./-]*)")
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_TOOL = re.compile(r"(?<![\w/.-])((?:tools|benchmarks)/\w+\.py|\b\w+\.py)\b")
_LINE_REFERENCE = re.compile(r"([\w/.-]+\.py):(\d+)")
_SECTION_REFERENCE = re.compile(r'(?:[Ss]ee|[Ss]ection|README,) "([^"]+)"')


def _text(path):
    return path.read_text(encoding="utf-8")


def _prose_lines(path):
    """(line number, line) of the Markdown outside fenced code blocks."""
    fence = False
    for number, line in enumerate(_text(path).splitlines(), 1):
        if line.strip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            yield number, line


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path):
    """Every anchor of a Markdown file (duplicates numbered as GitHub does)."""
    seen, found = {}, set()
    for _, line in _prose_lines(Path(path)):
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            anchor = github_anchor(match.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return frozenset(found)


def headings():
    """The text of every heading of every page, without code marks."""
    return {
        re.sub(r"[`*]", "", line.lstrip("#").strip())
        for path in DOCS
        for _, line in _prose_lines(path)
        if line.startswith("#")
    }


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_links_and_anchors_resolve(doc):
    problems = []
    for number, line in _prose_lines(doc):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # an external address
            file_part, _, anchor = target.partition("#")
            resolved = (doc.parent / file_part).resolve() if file_part else doc
            if not resolved.exists():
                problems.append(f"{doc.name}:{number}: {target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(str(resolved)):
                problems.append(f"{doc.name}:{number}: {target}: no heading with anchor #{anchor}")
    assert not problems, "\n".join(problems)


def _key_exists(cfg, key, prefix=False):
    """Whether ``key`` is a key or node of ``cfg`` (with ``prefix``: starts one, ``POOLER_*``)."""
    node = cfg
    *parents, last = key.split(".")
    for name in parents:
        if not isinstance(node, dict) or name not in node:
            return False
        node = node[name]
    if prefix:
        return isinstance(node, dict) and any(name.startswith(last) for name in node)
    return isinstance(node, dict) and last in node


def _renamed_key_row(doc, line, key):
    """Whether ``line`` is the row of config_keys.md's table of renamed keys naming ``key``."""
    return doc.name == "config_keys.md" and key in RENAMED_KEYS and line.startswith(f"| `{key}` | `")


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_config_keys_named_exist(doc):
    cfg = default_config()
    problems = [
        f"{doc.name}:{number}: {match.group(0)}"
        for number, line in enumerate(_text(doc).splitlines(), 1)
        for match in _CONFIG_KEY.finditer(line)
        if not line[: match.start()].endswith(_WRONG_KEY_EXAMPLE)
        and not _renamed_key_row(doc, line, match.group(1))
        and not _key_exists(cfg, match.group(1), prefix=match.group(2) == "*")
    ]
    assert not problems, "config keys that do not exist:\n" + "\n".join(problems)


def _path_named(line, match):
    """The repository path a match names, or None for a pattern, an output or a placeholder."""
    token, after = match.group(1), line[match.end() : match.end() + 1]
    if after in ("<", "*", "{") or re.search(r"[<>*{}]|\.\.\.", token):
        return None
    token = token.rstrip(".,;:")
    if token.startswith("datasets/") and not token.endswith((".py", ".md", "/")):
        return None  # data folders, made by the prepare scripts
    return REPO / token


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_file_paths_named_exist(doc):
    problems = []
    for number, line in _prose_lines(doc):
        for match in _REPO_PATH.finditer(line):
            path = _path_named(line, match)
            if path is not None and not path.exists():
                problems.append(f"{doc.name}:{number}: {match.group(1)}")
    assert not problems, "paths that do not exist:\n" + "\n".join(problems)


@lru_cache(maxsize=None)
def tool_options(script):
    """The option strings of a tool: its ``argument_parser()`` if it has one, else its --help."""
    path = REPO / script
    if not path.is_file():
        return None
    sys.path.insert(0, str(path.parent))
    try:
        namespace = runpy.run_path(str(path), run_name=f"docs_{path.stem}")
    finally:
        sys.path.pop(0)
    if "argument_parser" in namespace:
        return frozenset(namespace["argument_parser"]()._option_string_actions)
    result = subprocess.run(
        [sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300,
    )
    assert result.returncode == 0, f"{script} --help failed:\n{result.stderr[-2000:]}"
    return frozenset(_OPTION.findall(result.stdout))


def _script_of(name):
    """``tools/x.py`` / ``benchmarks/x.py`` for a tool named by path or by bare file name."""
    if "/" in name:
        return name if (REPO / name).is_file() else None
    for folder in ("tools", "benchmarks"):
        if (REPO / folder / name).is_file():
            return f"{folder}/{name}"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_tool_options_named_exist(doc):
    """An ``--option`` belongs to the tools named in its paragraph or, when none is, to the
    last tool named before it; it must be an option of one of them (``python -m`` module
    commands are left to tests/test_readme_commands.py)."""
    problems, current, paragraph = [], [], []
    for number, line in enumerate(_text(doc).splitlines(), 1):
        if not line.strip():
            paragraph = []
            continue
        named = [s for s in (_script_of(n) for n in _TOOL.findall(line)) if s is not None]
        paragraph += named
        if named:
            current = list(dict.fromkeys(named))
        tools = list(dict.fromkeys(paragraph)) or current
        code = [line] if line.startswith("    ") else _CODE_SPAN.findall(line)
        options = _OPTION.findall(" ".join(span for span in code if " -m " not in span))
        if not options or not tools:
            continue
        known = set().union(*(tool_options(tool) for tool in tools))
        problems += [
            f"{doc.name}:{number}: {option} (tools: {', '.join(tools)})" for option in options if option not in known
        ]
    assert not problems, "options no tool of their context has:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_line_and_section_references_resolve(doc):
    problems, known = [], headings()
    for number, line in _prose_lines(doc):
        for name, line_number in _LINE_REFERENCE.findall(line):
            path = REPO / name
            if not path.is_file() or int(line_number) > len(_text(path).splitlines()):
                problems.append(f"{doc.name}:{number}: {name}:{line_number}")
        problems += [f'{doc.name}:{number}: section "{s}"' for s in _SECTION_REFERENCE.findall(line) if s not in known]
    assert not problems, "references that do not resolve:\n" + "\n".join(problems)


_CODE_CITATION = re.compile(r'\b(README(?:\.md)?|docs/[\w/.-]+\.md)[,:]? "([^"]+)"')


def _section_titles(path):
    return {re.sub(r"[`*]", "", line.lstrip("#").strip()) for _, line in _prose_lines(path) if line.startswith("#")}


def test_code_cites_only_existing_doc_sections():
    """A comment that sends the reader to a section of a page (``docs/paper.md, "Targets"``)
    names a section that page has, and none sends them to a file outside the repository."""
    problems = []
    sources = [*REPO.glob("*/**/*.py"), *REPO.glob("configs/**/*.yaml"), REPO / "requirements.txt"]
    for path in sorted(p for p in sources if ".venv" not in p.parts):
        for number, line in enumerate(_text(path).splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{number}"
            for page, section in _CODE_CITATION.findall(line):
                target = REPO / ("README.md" if page.startswith("README") else page)
                if not target.is_file() or section not in _section_titles(target):
                    problems.append(f'{where}: {page}, "{section}"')
            if re.search(r"\bsee DESIGN\b", line):
                problems.append(f"{where}: DESIGN is not in the repository")
    assert not problems, "\n".join(problems)


def test_generated_pages_are_current():
    assert write_generated_pages(check=True) == [], "run `python tools/make_docs.py` and commit docs/"


def test_config_reference_names_every_key_of_config_py():
    detectron2_keys = set(_leaves(get_cfg()))
    added = [key for key in _leaves(default_config()) if key not in detectron2_keys]
    assert sorted(config_keys()) == sorted(added)
    page = config_reference()
    assert all(f"`{key}`" in page for key in added)


def _leaves(node, prefix=""):
    for name, value in node.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            yield from _leaves(value, key + ".")
        else:
            yield key


def test_github_anchor():
    assert github_anchor("The two protocols (`TEST.OOD.PROTOCOL`)") == "the-two-protocols-testoodprotocol"
    assert github_anchor("VOS variants (all off by default)") == "vos-variants-all-off-by-default"
