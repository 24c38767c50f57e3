"""The docs are a map that holds: every file path and every section of docs/paper.md named in the code, the
configs and the docs exists in the repository, no doc names an issue tracker's numbers, the two front pages
stay short, and every training command of README and docs/ parses as plifnet fit reads it."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [*sorted((ROOT / "plifnet").rglob("*.py")), *sorted((ROOT / "plifnet" / "configs").rglob("*.yaml"))]
TOP_FOLDERS = ("plifnet", "docs", "configs", "scripts", "benchmarks", "tests", "examples")
PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP_FOLDERS)})/[\w./-]*[\w/])")
SECTION = re.compile(r"docs/paper\.md,? sections? (\d+)(?: and (\d+))?")


def named_paths(text: str) -> set[str]:
    """Paths of files (a name with an extension) and folders (ending in /), placeholders left out; a metric's
    name such as ``plifnet/ACs`` is neither."""
    return {
        path
        for path in PATH.findall(text)
        if not re.search(r"[<>*{}]|\.\.\.", path) and (path.endswith("/") or re.search(r"\.\w+$", path))
    }


def test_the_path_finder_finds_paths_and_leaves_placeholders():
    text = (
        "see `plifnet/neurons.py`, configs/trainer/, (docs/paper.md), configs/<name>.yaml, a/plifnet/x.py, plifnet/ACs"
    )
    assert named_paths(text) == {"plifnet/neurons.py", "configs/trainer/", "docs/paper.md"}
    assert SECTION.findall("docs/paper.md section 3, docs/paper.md sections 3 and 5") == [("3", ""), ("3", "5")]


@pytest.mark.parametrize("path", [*DOCS, *SOURCES], ids=lambda path: str(path.relative_to(ROOT)))
def test_every_path_and_section_named_exists(path):
    text = path.read_text()
    missing = sorted(name for name in named_paths(text) if not (ROOT / name).exists())
    assert missing == [], f"{path.relative_to(ROOT)} names paths the repository does not hold: {missing}"
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text) if path.suffix == ".md" else []
    broken = sorted(link for link in links if not (path.parent / link).exists())
    assert broken == [], f"{path.relative_to(ROOT)} links to files that do not exist: {broken}"
    headings = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "paper.md").read_text(), re.M))
    cited = {number for pair in SECTION.findall(text) for number in pair if number}
    assert cited <= headings, f"{path.relative_to(ROOT)} cites sections of docs/paper.md it lacks: {cited - headings}"
    assert "SPEC" not in text, f"{path.relative_to(ROOT)} cites a SPEC outside the repository; cite docs/paper.md"


def test_no_doc_names_an_issue_number():
    for path in [*DOCS, ROOT / "docs" / "results" / "runs.yaml"]:
        found = re.findall(r"\b[Ii]ssues? \d+|#\d{2,}\b", path.read_text())
        assert found == [], f"{path.relative_to(ROOT)} names {found}"


def test_the_front_pages_are_short():
    for name in ("README.md", "BENCHMARKS.md"):
        assert len((ROOT / name).read_text().splitlines()) <= 200, name


def training_commands() -> list[tuple[str, list[str]]]:
    """Every ``plifnet fit`` / ``python cli.py fit`` line of the bash blocks of README and docs/, as arguments."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = re.search(r"(?:plifnet|cli\.py) fit\s(.*)", line.split("  #")[0])
                if command:
                    found.append((f"{path.relative_to(ROOT)}: {line.strip()[:80]}", shlex.split(command[1])))
    return found


@pytest.mark.parametrize("where, args", training_commands(), ids=[where for where, _ in training_commands()])
def test_every_training_command_of_the_docs_parses(where, args, run_cli, example_plugin):
    """Read as plifnet fit reads it, to the resolved configuration (--print_config): every option, config
    and class it names exists. The runs themselves are the recipe tests (the EXTENDING commands, the smoke run)."""
    result = run_cli("fit", *args, "--print_config", cwd=ROOT)
    assert result.returncode == 0, f"{where}\n{result.stderr[-2000:]}"
    assert "model" in yaml.safe_load(result.stdout)


def test_the_training_commands_are_found():
    wheres = " ".join(where for where, _ in training_commands())
    assert "README.md" in wheres and "docs/training.md" in wheres and "docs/EXTENDING.md" in wheres


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    modules = {path.relative_to(ROOT / "plifnet") for path in (ROOT / "plifnet").glob("*.py")} - {Path("__init__.py")}
    unnamed = sorted(str(module) for module in modules if f"`{module}`" not in page)
    assert unnamed == [], f"docs/architecture.md does not place {unnamed} on a floor"
