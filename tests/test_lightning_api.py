"""plifnet rides Lightning's public API only: no underscore name imported from Lightning, no private
attribute of a Lightning object read, no private method of a Lightning class overridden, outside
``plifnet/compat.py`` (which says, for each, why Lightning has no public way)."""

import ast
import importlib
import inspect
from pathlib import Path

import lightning
import torch

from conftest import ROOT

LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")


def lightning_private_names() -> set[str]:
    """Every ``self._name`` and ``def _name`` in Lightning's own source."""
    names = set()
    for path in Path(lightning.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
    torchs = set(dir(torch.Tensor)) | set(dir(torch.nn.Module))  # torch's own (tensor._version), not Lightning's
    return {name for name in names if name.startswith("_") and not name.startswith("__") and name not in torchs}


def our_files() -> list[Path]:
    folders = ["plifnet", "tests", "benchmarks", "scripts", "examples"]
    files = [path for folder in folders for path in (ROOT / folder).rglob("*.py")]
    return [
        path for path in files + list(ROOT.glob("*.py")) if path.name != "compat.py" or path.parent.name != "plifnet"
    ]


def test_no_private_lightning_name_outside_the_compat_module():
    private = lightning_private_names()
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in our_files()}
    ours = set()  # the underscore names plifnet defines itself (its own methods and attributes)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                ours.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                ours.add(node.attr)
    found = []
    for path, tree in trees.items():
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(LIGHTNING):
                if any(part.startswith("_") for part in node.module.split(".")):
                    found.append(f"{where}:{node.lineno} from {node.module}")
                found += [
                    f"{where}:{node.lineno} import {alias.name}" for alias in node.names if alias.name.startswith("_")
                ]
            elif isinstance(node, ast.Attribute) and node.attr in private and node.attr not in ours:
                found.append(f"{where}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.ClassDef):
                bases = [base for base in lightning_bases(node, tree) if base is not None]
                found += [
                    f"{where}:{item.lineno} {node.name}.{item.name} overrides Lightning's"
                    for item in node.body
                    if isinstance(item, ast.FunctionDef)
                    and item.name.startswith("_")
                    and not item.name.startswith("__")
                    and any(hasattr(base, item.name) for base in bases)
                ]
    assert not found, "\n".join(found)


def lightning_bases(node: ast.ClassDef, tree: ast.Module):
    """The Lightning classes among a class's bases, resolved through the file's imports."""
    imported = {}
    for statement in ast.walk(tree):
        if isinstance(statement, ast.ImportFrom) and (statement.module or "").startswith(LIGHTNING):
            for alias in statement.names:
                imported[alias.asname or alias.name] = (statement.module, alias.name)
        elif isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.name.startswith(LIGHTNING):
                    imported[alias.asname or alias.name] = (alias.name, None)
    for base in node.bases:
        chain = []
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in imported:
            continue
        module, name = imported[base.id]
        value = importlib.import_module(module)
        for attr in ([name] if name else []) + chain:
            value = getattr(value, attr, None)
        yield value if inspect.isclass(value) else None


def test_the_check_finds_what_it_looks_for(tmp_path, monkeypatch):
    """The three kinds of private use, in a file of their own, are found (the check can fail)."""
    bad = tmp_path / "plifnet" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters\n"
        "from lightning.pytorch.cli import LightningCLI\n"
        "def f(trainer):\n    return trainer._accelerator_connector\n"
        "class CLI(LightningCLI):\n    def _run_subcommand(self, subcommand):\n        pass\n"
    )
    import test_lightning_api as this

    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "our_files", lambda: [bad])
    try:
        this.test_no_private_lightning_name_outside_the_compat_module()
    except AssertionError as error:
        message = str(error)
    else:
        raise AssertionError("nothing was found")
    assert "import _given_hyperparameters" in message and "._accelerator_connector" in message
    assert "CLI._run_subcommand overrides Lightning's" in message
