"""The README and docs/ match the code: the README's commands are the ones CI runs and it stays one page;
every link, path and module the docs name exists, and the module map names every module; the tables
of error codes, settings, presets, progress and Redis keys state what the code does."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from pipeline.errors import ERROR_CODES
from pipeline.jobs import keys
from pipeline.presets import PRESETS
from pipeline.run.stages import DONE, STAGE_PROGRESS
from pipeline.settings import Settings
from tests.support.paths import REPO_ROOT

README_PATH = REPO_ROOT / "README.md"
DOCS_DIR = REPO_ROOT / "docs"
DOC_PATHS = [README_PATH, *sorted(DOCS_DIR.glob("*.md"))]
README = README_PATH.read_text()
QUICK_START = ("bash scripts/setup && .venv/bin/shop3d generate path/to/photo.jpg --out out/", "bash scripts/test")
README_MAX_LINES = 180

# Code-level paths the docs may name; each must exist (`pipeline/run/stages.py`, `bench/model.py`, `pipeline/jobs/`).
_REPO_PATH = re.compile(r"(?<![\w/.~-])((?:pipeline|deployments|bench|scripts|tests|tools|deploy)/[\w./-]*\w/?)")
_MODULE = re.compile(r"(?<![\w/.~-])((?:pipeline|deployments)/[\w/]*\w\.py)\b")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def doc(name: str) -> str:
    return (DOCS_DIR / name).read_text()


def prose(text: str) -> str:
    """The text outside fenced code blocks (a `# comment` in a bash block is not a heading)."""
    return _FENCE.sub("", text)


def section(text: str, heading: str) -> str:
    """The prose under `heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    match = re.search(rf"^{re.escape(heading)}\s*$(.*?)(?=^#{{1,{len(level)}}} |\Z)", prose(text), re.M | re.S)
    assert match, f"no section {heading!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in `text`, as lists of stripped cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} +(.+?)\s*$", prose(text), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_ci_runs_the_readme_test_command() -> None:
    assert "bash scripts/test" in README
    assert re.search(r"^exec bash scripts/test\s*$", (REPO_ROOT / ".ci" / "run").read_text(), re.M)


def test_readme_keeps_its_two_quick_start_commands() -> None:
    lines = README.splitlines()
    for command in QUICK_START:
        assert command in lines, command


def test_readme_is_one_page() -> None:
    assert len(README.splitlines()) <= README_MAX_LINES


def link_resolves(source: Path, target: str) -> bool:
    """A relative link names an existing file and, for a `.md#anchor`, one of its headings."""
    file_part, _, fragment = target.partition("#")
    linked = (source.parent / file_part).resolve() if file_part else source
    if not linked.exists():
        return False
    return not fragment or linked.suffix != ".md" or fragment in anchors(linked.read_text())


def backticked_name(cell: str) -> str:
    """`fast` (default) -> fast: the name a table row starts with."""
    match = re.match(r"`(\w+)`", cell)
    assert match, cell
    return match.group(1)


@pytest.mark.parametrize("path", DOC_PATHS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    targets = [t for t in _LINK.findall(prose(path.read_text())) if not re.match(r"^[a-z]+:", t)]  # not http(s)
    assert [target for target in targets if not link_resolves(path, target)] == []


@pytest.mark.parametrize("path", DOC_PATHS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_path_named_exists(path: Path) -> None:
    missing = sorted({p for p in _REPO_PATH.findall(path.read_text()) if not (REPO_ROOT / p).exists()})
    assert missing == []


def test_readme_module_map_names_real_files() -> None:
    """A row's bare file names (`stages.py`) live in the row's directory (`pipeline/run/`)."""
    missing = []
    for cells in table_rows(section(README, "## How it works")):
        base = _REPO_PATH.search(cells[0])
        if base is None:
            continue
        folder = REPO_ROOT / base.group(1) if base.group(1).endswith("/") else (REPO_ROOT / base.group(1)).parent
        names = re.findall(r"(?<![\w/.-])(\w+\.py)\b", " | ".join(cells))
        missing += [f"{folder.relative_to(REPO_ROOT)}/{name}" for name in names if not (folder / name).exists()]
    assert missing == []


def test_architecture_names_every_module() -> None:
    named = set(_MODULE.findall(doc("architecture.md")))
    modules = [*(REPO_ROOT / "pipeline").rglob("*.py"), *(REPO_ROOT / "deployments").glob("*.py")]
    expected = {m.relative_to(REPO_ROOT).as_posix() for m in modules if m.name not in ("__init__.py", "__main__.py")}
    assert sorted(expected - named) == []


def test_every_error_code_is_documented() -> None:
    rows = {cells[0].strip("`"): cells[1] for cells in table_rows(section(doc("backend-contract.md"), "## Error codes"))
            if cells[1] in ("terminal", "retried")}
    assert set(rows) == set(ERROR_CODES)
    # The retried codes are exactly those the code raises as TransientError.
    sources = "\n".join(p.read_text() for d in ("pipeline", "deployments") for p in (REPO_ROOT / d).rglob("*.py"))
    transient = set(re.findall(r'TransientError\(\s*"([a-z_]+)"', sources))
    assert {code for code, kind in rows.items() if kind == "retried"} == transient


def test_every_setting_is_documented() -> None:
    rows = table_rows(section(doc("configuration.md"), "## Settings"))
    documented = {name for cells in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])}
    assert documented == {name.upper() for name in Settings.model_fields}


def test_preset_table_states_the_real_budgets() -> None:
    rows = {backticked_name(cells[0]): cells
            for cells in table_rows(section(doc("assets.md"), "## Quality presets")) if cells[0].startswith("`")}
    assert set(rows) == set(PRESETS)
    for preset in PRESETS.values():
        _, resolution, faces, glb_texture, glb_max, usdz_texture, usdz_max = rows[preset.name]
        assert resolution == f"{preset.mc_resolution}³" and faces == f"{preset.max_faces:,}"
        assert glb_texture.startswith(f"{preset.texture_size}²" if preset.texture_size else "vertex colours")
        assert glb_max == f"{preset.max_glb_bytes // 1_000_000} MB"
        assert usdz_texture == f"{preset.usdz_texture_size}²"
        assert usdz_max == f"{preset.max_usdz_bytes // 1_000_000} MB"


def test_progress_table_matches_the_stages() -> None:
    rows = table_rows(section(doc("backend-contract.md"), "## Job state"))
    documented = {backticked_name(cells[0]): int(cells[1]) for cells in rows if cells[0].startswith("`")}
    expected = {str(stage): percent for stage, percent in STAGE_PROGRESS.items()}
    assert documented == {**expected, DONE[0]: DONE[1]}


def test_redis_key_table_names_every_key() -> None:
    owned = {value for name, value in vars(keys).items() if name.endswith("_KEY") and isinstance(value, str)}
    for name, function in inspect.getmembers(keys, inspect.isfunction):
        if name.endswith("_key"):
            (parameter,) = inspect.signature(function).parameters
            key = function("{" + parameter + "}")
            if key.startswith(keys.PREFIX):
                owned.add(key)
    rows = table_rows(section(doc("backend-contract.md"), "## Redis keys"))
    documented = {cells[0].strip("`") for cells in rows if cells[0].startswith("`")}
    assert documented == owned
