"""The package's shape (issue #13): no import cycle among module-level imports, no module over 400 lines, the status
and metric-name lists defined once (largebatch/vocab.py), and `import largebatch.config` stays light."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PKG = REPO_ROOT / "largebatch"
MAX_LINES = 400
FILES = sorted(PKG.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in FILES}


def _module_level(body: list[ast.stmt]):
    """The statements run when the module is imported: the body, and the bodies of module-level if/try/with
    (never `if TYPE_CHECKING:`); functions and classes are not entered."""
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            yield from _module_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level(node.body + node.orelse + node.finalbody
                                     + [s for h in node.handlers for s in h.body])
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)
        else:
            yield node


def _every_level(tree: ast.Module):
    """Every statement, inside functions and classes too (never under `if TYPE_CHECKING:`, which never runs)."""
    skipped = {id(n) for node in ast.walk(tree)
               if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for stmt in node.body for n in ast.walk(stmt)}
    return (n for n in ast.walk(tree) if id(n) not in skipped)


def import_edges(path: Path, every_level: bool = False) -> set[str]:
    """largebatch modules imported at module level (every_level: also inside functions, where imports are kept for
    start-up time): `from a.b import c` is a.b.c when that is a module, else a.b."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in (_every_level(tree) if every_level else _module_level(tree.body)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in out if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_among_module_level_imports():
    graph = {name: import_edges(path) for name, path in MODULES.items()}
    assert sum(map(len, graph.values())) > 50  # the walk sees the package's imports
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_counting_imports_inside_functions():
    """An import kept inside a function runs as soon as the function does: a cycle through one is still a cycle
    (config/ once reached tune/ this way, for the searcher and scheduler names)."""
    graph = {name: import_edges(path, every_level=True) for name, path in MODULES.items()}
    module_level = {name: import_edges(path) for name, path in MODULES.items()}
    assert sum(map(len, graph.values())) > sum(map(len, module_level.values())) + 100  # it sees the inner ones
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (counting imports inside functions): " + " -> ".join(cycle)


def test_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_module_over_400_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(REPO_ROOT)} has {n} lines; split it (at most {MAX_LINES})"


# ---------------------------------------------------------------- one vocabulary
STATUS_WORDS = {"completed", "diverged", "stopped_early", "failed", "running"}
VOCAB_NAMES = {"STATUSES", "FINAL_STATUSES", "SCORED_STATUSES", "PROBLEM_STATUSES", "OUTCOME_STATUSES",
               "UNSCORED_PRECEDENCE", "MODES", "LOSS_METRICS", "LOOP_METRICS", "INSTRUMENT_METRICS", "TRIAL_FIGURES",
               "SUMMARIES"}
# Lists in files owned by another change, to go at merge (the one-line changes are in the issue #13 report); the
# test allows them, never more: a new list anywhere else fails.
PENDING: dict[str, int] = {}


def status_lists(path: Path) -> list[int]:
    """Lines of tuple/list/set displays of two or more status strings (one status in a comparison is fine)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
            words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len(words) >= 2 and set(words) <= STATUS_WORDS:
                lines.append(node.lineno)
    return lines


def test_status_lists_are_defined_once_in_vocab():
    found = {str(p.relative_to(REPO_ROOT)): status_lists(p) for p in FILES if p.name != "vocab.py"}
    extra = {f: lines for f, lines in found.items() if len(lines) > PENDING.get(f, 0)}
    assert not extra, f"status lists outside largebatch/vocab.py (import them from there): {extra}"


def test_vocabulary_names_are_assigned_only_in_vocab():
    """A re-export (`SCORED = SCORED_STATUSES`, `from largebatch.vocab import ...`) is fine; a second literal is not."""
    literal = (ast.Tuple, ast.List, ast.Set, ast.Dict)
    owners: dict[str, list[str]] = {}
    for p in FILES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, literal):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id in VOCAB_NAMES:
                        owners.setdefault(t.id, []).append(str(p.relative_to(REPO_ROOT)))
    pending: dict[str, list[str]] = {}
    extra = {k: [f for f in v if f != "largebatch/vocab.py" and f not in pending.get(k, [])]
             for k, v in owners.items()}
    assert not {k: v for k, v in extra.items() if v}, extra
    import largebatch.vocab as vocab

    assert all(hasattr(vocab, name) for name in VOCAB_NAMES)


def test_status_enum_is_the_vocabulary():
    from largebatch.vocab import FINAL_STATUSES, SCORED_STATUSES, STATUSES, Status

    assert set(STATUSES) == {s.value for s in Status} == STATUS_WORDS
    assert set(SCORED_STATUSES) <= set(FINAL_STATUSES) <= set(STATUSES)
    assert all(type(s) is str for s in STATUSES + FINAL_STATUSES)  # plain strings go to MLflow and JSON
    assert Status("diverged") == "diverged" and f"{Status.STOPPED_EARLY}" == "stopped_early"


# ---------------------------------------------------------------- light imports
@pytest.mark.parametrize("module", ["largebatch.config", "largebatch.vocab", "largebatch.tune.searchers",
                                    "largebatch.tune.schedulers", "largebatch.report"])
def test_light_modules_import_no_torch_ray_or_mlflow(module):
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]; "
            f"print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import {module} loads {out.stdout.strip()}"


def test_storage_does_not_import_data():
    """Dependencies point one way: data/ may use storage and s3; storage.py never imports data/ (at any level)."""
    tree = ast.parse((PKG / "storage.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in mods if m and m.startswith("largebatch.data")}


def test_report_does_not_import_instrument_sections():
    """The report's sections are the report package's; instruments/ keeps only the critical-batch fit."""
    from largebatch.instruments import critical_batch

    assert not hasattr(critical_batch, "why_section") and not hasattr(critical_batch, "format_sections")
    for p in (PKG / "report").glob("*.py"):
        src = p.read_text()
        assert "instruments.critical_batch import critical_batch_section" not in src
        assert "instruments.critical_batch import format_sections" not in src


def test_test_modules_have_unique_basenames():
    """pytest imports test files by basename (rootdir-relative packages are not used here): two test_x.py in
    different folders stop the whole run at collection ("import file mismatch")."""
    root = Path(__file__).resolve().parents[1]
    seen: dict[str, list[str]] = {}
    for f in root.rglob("test_*.py"):
        seen.setdefault(f.name, []).append(str(f.relative_to(root)))
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}
