"""run_study imports, before Ray starts, every package module its stages import once Ray runs
(largebatch/tune/driver.py AFTER_RAY_IMPORTS): inside `ray job submit` an import from the job's working_dir copy
in the seconds after the driver joined Ray failed once in CI. This keeps the list complete as stages change."""
from __future__ import annotations

import ast
from pathlib import Path

from largebatch.tune import driver

PKG = Path(__file__).resolve().parents[2] / "largebatch"
# the stages: run_study's own module, and the modules whose functions it calls once Ray runs
STAGE_MODULES = ("tune/driver.py", "tune/finish.py", "tune/parent.py", "tune/plan.py", "tune/abort.py")


def _is_module(name: str) -> bool:
    path = PKG.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def lazy_package_imports(path: Path) -> set[str]:
    """largebatch modules imported inside functions (not at module level, not under TYPE_CHECKING)."""
    out = set()
    tree = ast.parse(path.read_text())
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("largebatch"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    out.add(full if _is_module(full) else node.module)
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.startswith("largebatch")}
    return out


def test_every_module_a_stage_imports_after_ray_is_imported_before_it():
    lazy = set().union(*(lazy_package_imports(PKG / m) for m in STAGE_MODULES))
    assert len(lazy) > 20  # the scan sees the stages' imports
    missing = sorted(lazy - set(driver.AFTER_RAY_IMPORTS) - {"largebatch"})
    assert not missing, f"add to tune/driver.py AFTER_RAY_IMPORTS: {missing}"
    assert all(_is_module(m) for m in driver.AFTER_RAY_IMPORTS)


def test_import_before_ray_imports_them(monkeypatch):
    import importlib

    seen: list[str] = []
    monkeypatch.setattr(importlib, "import_module", seen.append)
    driver.import_before_ray()
    assert seen == list(driver.AFTER_RAY_IMPORTS)
