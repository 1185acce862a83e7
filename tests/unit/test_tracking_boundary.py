"""The tracking boundary: every MLflow call, run, tag and search filter lives behind largebatch/tracking/'s API.
Outside it only mlflow_app.py (MLflow's server app) imports mlflow, and no module calls an MLflow client
(`x.client.y`) or builds a search filter (`filter_string=`)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "largebatch"
TRACKING = PKG / "tracking"
MAY_IMPORT_MLFLOW = {PKG / "mlflow_app.py"}
OUTSIDE = [p for p in sorted(PKG.rglob("*.py")) if TRACKING not in p.parents]


def _findings(path: Path) -> list[str]:
    where = path.relative_to(PKG.parent) if PKG in path.parents else path.name
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        if any(n == "mlflow" or n.startswith("mlflow.") for n in names) and path not in MAY_IMPORT_MLFLOW:
            out.append(f"{where}:{node.lineno} imports mlflow")
        if isinstance(node, ast.Call) and any(k.arg == "filter_string" for k in node.keywords):
            out.append(f"{where}:{node.lineno} builds a search filter (filter_string=)")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "client":
            out.append(f"{where}:{node.lineno} calls the MLflow client (.client.{node.attr})")
    return out


def test_the_scan_sees_the_package():
    assert len(OUTSIDE) > 50 and PKG / "records.py" in OUTSIDE and (TRACKING / "runs.py").is_file()
    assert not any(TRACKING in p.parents for p in OUTSIDE)


def test_the_scan_finds_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import mlflow.entities\nfrom mlflow import MlflowClient\n"
                   "def f(t):\n    t.client.search_runs(['1'], filter_string='x')\n")
    found = "\n".join(_findings(bad))
    assert found.count("imports mlflow") == 2 and "filter_string=" in found and ".client.search_runs" in found


def test_mlflow_calls_and_filters_stay_in_the_tracking_package():
    findings = [f for path in OUTSIDE for f in _findings(path)]
    assert not findings, "MLflow outside largebatch/tracking/ (add a named method there):\n" + "\n".join(findings)
