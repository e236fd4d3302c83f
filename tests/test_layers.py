"""The import-layer contract (pyproject.toml, [tool.importlinter]; docs/architecture.md "Layers"): imports run only
downward. The contract is checked on vprkit itself, and shown to fail on a copy of vprkit with one upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package and pyproject.toml under `root` (that copy of vprkit first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def copy_project(dst: Path) -> Path:
    """vprkit's sources and pyproject.toml, without data files (the contract reads only the sources)."""
    shutil.copytree(ROOT / "vprkit", dst / "vprkit", ignore=lambda d, names: [
        n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir()) or n == "__pycache__"])
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_vprkit_imports_only_downward():
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Contracts: 1 kept, 0 broken." in res.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """models importing results (two layers up), even lazily inside a function, is named as a broken contract."""
    root = copy_project(tmp_path)
    assert lint(root).returncode == 0  # the copy is as clean as the original
    (root / "vprkit" / "models" / "upward.py").write_text(
        "def retrieval():\n    from ..results import Retrieval\n\n    return Retrieval\n")
    res = lint(root)
    assert res.returncode == 1
    assert "Contracts: 0 kept, 1 broken." in res.stdout
    assert "vprkit.models.upward -> vprkit.results" in res.stdout


def test_independent_siblings_may_not_import_each_other(tmp_path):
    """`models | evaluation` are one layer of independent siblings: evaluation importing models is refused."""
    root = copy_project(tmp_path)
    (root / "vprkit" / "evaluation" / "sideways.py").write_text("from ..models import base\n")
    res = lint(root)
    assert res.returncode == 1 and "vprkit.evaluation.sideways -> vprkit.models.base" in res.stdout
