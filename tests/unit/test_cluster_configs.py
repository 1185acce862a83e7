"""cluster/*.yaml: valid against Ray's own ray/autoscaler/ray-schema.json, Ray pinned as in pyproject.toml."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tools.deploy import validate_cluster_config
from tools.deploy.pins import read_pins

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "cluster").glob("*.yaml"))


def test_both_launcher_configs_exist():
    assert {p.name for p in CONFIGS} >= {"aws-gpu.yaml", "local.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_cluster_config_validates(path):
    assert validate_cluster_config(path) == []


def test_aws_gpu_shape():
    config = yaml.safe_load((REPO / "cluster/aws-gpu.yaml").read_text())
    pins = read_pins(REPO)
    assert config["docker"]["image"] == f"rayproject/ray:{pins.ray}-py311-gpu"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # no GPU on the head
    [gpu] = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu["node_config"]["InstanceType"].startswith("g5.")
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"]
    commands = " ".join(config["setup_commands"])
    assert f"torch=={pins.torch}" in commands and "~/largebatch" in commands
    assert commands.index("torch==") < commands.index("pip install --no-cache-dir --constraint")
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"] if "ray start" in c)


def test_local_is_documented_placeholders():
    text = (REPO / "cluster/local.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": ["127.0.0.1"]}
    assert "PLACEHOLDERS" in text


def test_readme_has_the_launcher_commands():
    text = (REPO / "cluster/README.md").read_text()
    assert "ray up -y cluster/aws-gpu.yaml" in text
    assert "ray job submit --address http://127.0.0.1:8265 --working-dir . --" in text


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "local.yaml"])
def test_unknown_top_level_key_fails(name, tmp_path):
    config = yaml.safe_load((REPO / "cluster" / name).read_text())
    config["setup_comands"] = ["echo typo"]
    problems = validate_cluster_config(_write(tmp_path, config), repo_root=REPO)
    assert any("'setup_comands' was unexpected" in p for p in problems), problems


def test_image_and_install_pins_must_match_pyproject(tmp_path):
    config = yaml.safe_load((REPO / "cluster/aws-gpu.yaml").read_text())
    config["docker"]["image"] = "rayproject/ray:2.49.0-py311-gpu"
    config["setup_commands"].append('pip install "ray[default]==2.49.0" torch==2.0.0')
    problems = validate_cluster_config(_write(tmp_path, config), repo_root=REPO)
    assert any("does not carry Ray 2.60.0" in p for p in problems), problems
    assert any("installs ray==2.49.0" in p for p in problems), problems
    assert any("installs torch==2.0.0" in p for p in problems), problems


def test_latest_image_fails(tmp_path):
    config = yaml.safe_load((REPO / "cluster/aws-gpu.yaml").read_text())
    config["docker"]["image"] = "rayproject/ray:latest"
    problems = validate_cluster_config(_write(tmp_path, config), repo_root=REPO)
    assert any("is not pinned" in p for p in problems), problems


def test_local_provider_rejects_node_types(tmp_path):
    config = yaml.safe_load((REPO / "cluster/local.yaml").read_text())
    config["available_node_types"] = {"x": {"resources": {}, "node_config": {}}}
    problems = validate_cluster_config(_write(tmp_path, config), repo_root=REPO)
    assert any("not supported with provider type local" in p for p in problems), problems


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "local.yaml"])
def test_dashboard_bound_to_loopback_only(name, tmp_path):
    config = yaml.safe_load((REPO / "cluster" / name).read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    config["head_start_ray_commands"] = [c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
                                         for c in config["head_start_ray_commands"]]
    problems = validate_cluster_config(_write(tmp_path, config), repo_root=REPO)
    assert any("--dashboard-host=0.0.0.0 exposes the dashboard" in p for p in problems), problems


def test_readme_says_how_to_reach_the_dashboard():
    text = (REPO / "cluster/README.md").read_text()
    for name in ("aws-gpu.yaml", "local.yaml"):
        assert f"ray dashboard cluster/{name} &" in text
