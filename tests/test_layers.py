"""The package's layers: every import points down (or sideways), never up."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import raysem

PACKAGE = Path(raysem.__file__).parent
LAYERS = [
    ("paths", "errors", "ports"),
    ("data",),
    ("models",),
    ("semantics",),
    ("training",),
    ("report",),
    ("service",),
    ("bench",),
    ("cli",),
]
"""Bottom to top; a module may import its own layer and those below it."""
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> str:
    """``raysem.semantics.loss`` → ``semantics``; ``raysem.paths`` → ``paths``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every raysem import in a file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("raysem.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("raysem"):
            if node.module == "raysem":
                out += [(node.lineno, f"raysem.{a.name}") for a in node.names if a.name != "__version__"]
            else:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use absolute raysem imports")
    return out


def upward_imports(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        source = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if source == "__init__":
            continue
        if source not in RANK:
            problems.append(f"{rel}: in no layer; add it to LAYERS")
            continue
        for line, target in imports(path):
            layer = layer_of(target)
            if layer and layer in RANK and RANK[layer] > RANK[source]:
                problems.append(f"{rel}:{line} imports {target} ({layer} is above {source})")
            elif layer and layer not in RANK:
                problems.append(f"{rel}:{line} imports {target}, which is in no layer")
    return problems


def test_no_import_points_upward():
    assert upward_imports() == []


def test_an_upward_import_is_reported(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "facts.py").write_text("from raysem.semantics.loss import IGNORE_INDEX\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "main.py").write_text("from raysem.data import facts\n")
    assert upward_imports(tmp_path) == ["data/facts.py:1 imports raysem.semantics.loss (semantics is above data)"]


def test_the_tree_shows_the_layers():
    top = [p.stem for p in PACKAGE.glob("*.py")]
    assert len(top) <= 12, top
    for folder in [PACKAGE, *(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())]:
        prefixes = Counter(p.stem.split("_")[0] for p in folder.glob("*.py") if "_" in p.stem and p.stem != "__init__")
        assert all(n < 3 for n in prefixes.values()), (folder, prefixes)
        assert (folder / "__init__.py").read_text().strip(), f"{folder}: __init__.py says nothing of what lives there"


def test_the_command_line_starts_without_torch_ray_or_mlflow():
    """``raysem --help`` stays fast: the heavy libraries load only in the command that needs them."""
    import subprocess
    import sys

    code = "import sys, raysem.cli.main; print(sorted(m for m in ('torch', 'transformers', 'ray', 'mlflow') if m in sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_bench_help_gives_the_benchmark_default_pack_sizes():
    from typer.testing import CliRunner

    from raysem.bench.training import PACK_SIZES, QUICK_PACK_SIZES
    from raysem.cli.main import app

    text = " ".join(CliRunner().invoke(app, ["bench", "--help"]).output.replace("│", " ").split())
    assert f"default {','.join(map(str, PACK_SIZES))}; quick: {','.join(map(str, QUICK_PACK_SIZES))}" in text
