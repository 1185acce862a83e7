"""k8s/: every kustomization renders (with the real kustomize, `kubectl kustomize`) and validates clean, and
each kind of mistake is caught.

Negative tests copy k8s/ into tmp_path, break one thing, and assert that the validator names it.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tools.deploy import KustomizeError, render_kustomization, validate_kustomization
from tools.deploy.pins import read_pins
from tools.deploy.render import find_kubectl, split_image
from tools.deploy.validate import strictify

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/dev", "k8s/overlays/gpu"]
# Rendering is kustomize's job; where kubectl is missing the rendering tests cannot run at all.
needs_kubectl = pytest.mark.skipif(find_kubectl() is None,
                                   reason="kubectl not on PATH (or $LARGEBATCH_KUBECTL): it renders k8s/")


def _render(rel: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render_kustomization(REPO / rel)}


def _ray_cluster_specs(objs: dict[tuple[str, str], dict]) -> list[dict]:
    """The interactive RayCluster's spec and the RayJob's own cluster spec."""
    job = objs[("RayJob", "fashion-mnist-study")]
    return [objs[("RayCluster", "largebatch")]["spec"], job["spec"]["rayClusterSpec"]]


def _groups(cluster_spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in cluster_spec["workerGroupSpecs"]}


@needs_kubectl
@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_kustomization_validates_clean(rel):
    assert validate_kustomization(REPO / rel) == []


@needs_kubectl
@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_everything_lands_in_the_namespace(rel):
    for obj in render_kustomization(REPO / rel):
        assert obj["metadata"].get("namespace") == "largebatch", obj["metadata"]["name"]


@needs_kubectl
def test_base_has_the_documented_shape():
    objs = _render("k8s/base")
    ray_version = read_pins(REPO).ray
    cluster = objs[("RayCluster", "largebatch")]["spec"]
    job = objs[("RayJob", "fashion-mnist-study")]["spec"]
    assert cluster == job["rayClusterSpec"]
    assert cluster["rayVersion"] == ray_version
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"] == {"mode": "token", "secretName": "ray-auth"}
    gpu = _groups(cluster)["gpu"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert toleration in gpu["template"]["spec"]["tolerations"]
    assert set(_groups(cluster)) == {"cpu", "gpu"}

    assert job["entrypoint"].split()[:3] == ["largebatch", "tune", "tune_spaces/fashion-mnist.yaml"]
    assert "--storage s3://" in job["entrypoint"] and "--mlflow http://mlflow:5000" in job["entrypoint"]
    assert job["submissionMode"] == "K8sJobMode"
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0

    mlflow = objs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert any(a.startswith("--artifacts-destination=s3://") for a in mlflow["args"])
    assert any(a.startswith("--allowed-hosts=") for a in mlflow["args"])
    env = {e["name"]: e for e in mlflow["env"]}
    assert "postgresql://" in env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert "MLFLOW_S3_ENDPOINT_URL" not in env  # only the dev overlay (MinIO) sets it
    assert ("StatefulSet", "postgres") in objs and ("NetworkPolicy", "postgres-ingress") in objs
    assert not any(kind == "Secret" for kind, _ in objs)


@needs_kubectl
def test_dev_overlay_adds_minio_and_drops_gpus():
    objs = _render("k8s/overlays/dev")
    assert {("Deployment", "minio"), ("Service", "minio"), ("Job", "minio-bucket-init")} <= set(objs)
    assert objs[("ConfigMap", "largebatch-config")]["data"]["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    mlflow = objs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    mlflow_env = {e["name"]: e for e in mlflow["env"]}
    assert mlflow_env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert "POSTGRES_PASSWORD" in mlflow_env  # the strategic merge added to the env list, it did not replace it
    for spec in _ray_cluster_specs(objs):
        groups = _groups(spec)
        assert set(groups) == {"cpu"}
        assert groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1"


@needs_kubectl
def test_gpu_overlay_keeps_a_gpu_worker_warm():
    objs = _render("k8s/overlays/gpu")
    for spec in _ray_cluster_specs(objs):
        gpu = _groups(spec)["gpu"]
        assert (gpu["minReplicas"], gpu["maxReplicas"]) == (1, 8)
        assert split_image(gpu["template"]["spec"]["containers"][0]["image"])[1].endswith("-gpu")


def test_k8s_schema_version_is_shipped():
    import kubernetes_validate.utils

    from tools.deploy.validate import K8S_VERSION

    # kubernetes-validate silently falls back to an older schema set when the exact one is missing
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


def test_secret_example_is_placeholders_and_not_applied():
    docs = list(yaml.safe_load_all((REPO / "k8s/secret.example.yaml").read_text()))
    assert {d["metadata"]["name"] for d in docs} == {"largebatch-secrets", "ray-auth", "mlflow-auth"}
    for doc in docs:
        assert all(v == "CHANGE_ME" for v in doc["stringData"].values())
    for rel in KUSTOMIZATIONS:
        text = (REPO / rel / "kustomization.yaml").read_text()
        assert "secret.example.yaml" not in yaml.safe_load(text).get("resources", [])


def test_readme_has_the_deploy_commands():
    text = (REPO / "k8s/README.md").read_text()
    for snippet in (
        "helm repo add kuberay https://ray-project.github.io/kuberay-helm/",
        "helm install kuberay-operator kuberay/kuberay-operator",
        "kubectl -n largebatch create secret generic largebatch-secrets",
        "kubectl apply -k k8s/overlays/dev",
        "kubectl -n largebatch get rayjob fashion-mnist-study -w",
        "kubectl -n largebatch port-forward svc/mlflow 5000:5000",
        "kubectl apply -f k8s/namespace.yaml",
        "kubectl -n largebatch create secret generic mlflow-auth",
        "## Security",
    ):
        assert snippet in text


def test_namespace_enforces_restricted():
    [ns] = yaml.safe_load_all((REPO / "k8s/namespace.yaml").read_text())
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == "largebatch"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for rel in KUSTOMIZATIONS:  # kept out of the kustomizations, so `kubectl delete -k` keeps the Secrets
        assert "namespace.yaml" not in yaml.safe_load((REPO / rel / "kustomization.yaml").read_text())["resources"]


@needs_kubectl
def test_tag_only_images_are_exactly_the_rendered_ones_with_reasons():
    # images.yaml may not carry stale entries that would excuse a future image
    tag_only = yaml.safe_load((REPO / "k8s/images.yaml").read_text())["tag_only"]
    rendered = set()
    for rel in KUSTOMIZATIONS:
        for obj in render_kustomization(REPO / rel):
            rendered |= {m.group(1) for m in re.finditer(r"'image': '([^']+)'", str(obj))}
    assert set(tag_only) == rendered
    assert all(len(reason.split()) >= 5 for reason in tag_only.values())


@needs_kubectl
def test_digest_with_tag_passes_without_a_tag_only_entry(k8s_copy):
    _mutate(k8s_copy, "base/postgres.yaml", "image: postgres:16.4", "image: postgres:16.4@sha256:" + "ab" * 32)
    problems = validate_kustomization(k8s_copy / "base", repo_root=REPO)
    assert not [p for p in problems if "postgres:16.4@" in p], problems


@needs_kubectl
def test_mlflow_auth_config_script_keeps_any_password(tmp_path, monkeypatch):
    # The init container's script, run as is (only its output path moved), read back the way MLflow reads it.
    from mlflow.server.auth.config import read_auth_config
    from sqlalchemy.engine import make_url

    deployment = _render("k8s/base")[("Deployment", "mlflow")]["spec"]["template"]["spec"]
    [init] = deployment["initContainers"]
    script = init["args"][0]
    assert script.count("/etc/mlflow-auth/basic_auth.ini") == 1
    ini = tmp_path / "basic_auth.ini"
    password = "p%w@/:?#[] x%%y"
    monkeypatch.setenv("POSTGRES_PASSWORD", password)
    exec(compile(script.replace("/etc/mlflow-auth/basic_auth.ini", str(ini)), "init", "exec"), {})
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    config = read_auth_config()
    url = make_url(config.database_uri)
    assert (url.username, url.password, url.host, url.port, url.database) == \
        ("mlflow", password, "postgres", 5432, "mlflow")
    assert config.default_permission == "NO_PERMISSIONS"


# ---- negative tests: one mistake each ------------------------------------------------------------

@pytest.fixture
def k8s_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    return tmp_path / "k8s"


def _mutate(root: Path, rel: str, old: str, new: str) -> None:
    """Replace every occurrence of `old` in one file of the copy."""
    path = root / rel
    text = path.read_text()
    assert old in text, f"mutation target {old!r} not in {rel}"
    path.write_text(text.replace(old, new))


MUTATIONS = {
    # id: (file, old, new, kustomization under k8s/, expected fragment of a problem)
    "typo-in-raycluster-spec": ("base/raycluster.yaml", "enableInTreeAutoscaling:", "enableInTreeAutoscalling:", "base",
                                "'enableInTreeAutoscalling' was unexpected"),
    "typo-in-worker-group": ("base/raycluster.yaml", "rayStartParams: {}", "rayStartParam: {}", "base",
                             "'rayStartParam' was unexpected"),
    "typo-in-ray-container": ("base/raycluster.yaml", "allowPrivilegeEscalation:", "allowPrivilegeEscalaton:", "base",
                              "'allowPrivilegeEscalaton' was unexpected"),
    "typo-in-rayjob-spec": ("base/rayjob.yaml", "shutdownAfterJobFinishes:", "shutdownAfterJobFinished:", "base",
                            "'shutdownAfterJobFinished' was unexpected"),
    "typo-in-built-in-kind": ("base/mlflow.yaml", "readinessProbe:", "readynessProbe:", "base",
                              "'readynessProbe' was unexpected"),
    "missing-secret-key": ("base/mlflow.yaml", "key: postgres-password", "key: postgres-passwd", "base",
                           "has no key 'postgres-passwd'"),
    "unknown-secret": ("base/postgres.yaml", "name: largebatch-secrets", "name: pg-secrets", "base",
                       "Secret 'pg-secrets' is not documented"),
    "auth-secret-unknown": ("base/raycluster.yaml", "secretName: ray-auth", "secretName: ray-token", "base",
                            "Secret 'ray-token' is not documented"),
    "real-value-in-secret-example": ("secret.example.yaml", "postgres-password: CHANGE_ME",
                                     "postgres-password: hunter2", "base", "must hold placeholders (CHANGE_ME) only"),
    "latest-tag": ("base/postgres.yaml", "image: postgres:16.4", "image: postgres:latest", "base",
                   "image 'postgres:latest' is not pinned"),
    "untagged-image": ("overlays/dev/minio.yaml", "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z",
                       "quay.io/minio/minio", "overlays/dev", "image 'quay.io/minio/minio' is not pinned"),
    "missing-probe": ("base/mlflow.yaml", "livenessProbe:", "startupProbe2:", "base", None),
    "service-selector-mismatch": ("base/mlflow.yaml", "app.kubernetes.io/name: mlflow\n  ports:",
                                  "app.kubernetes.io/name: mlfow\n  ports:", "base",
                                  "matches no pod template's labels"),
    "gpu-group-without-gpu-limit": ("base/raycluster.yaml", "                  nvidia.com/gpu: 1\n", "", "base", None),
    "entrypoint-missing-study": ("base/rayjob.yaml", "tune_spaces/fashion-mnist.yaml", "tune_spaces/no-such-study.yaml",
                                 "base", "'tune_spaces/no-such-study.yaml', which is not a file in tune_spaces/"),
    "entrypoint-unknown-mlflow-service": ("base/rayjob.yaml", "--mlflow http://mlflow:5000",
                                          "--mlflow http://tracking:5000", "base", "names no Service 'tracking'"),
    "ray-version-drift": ("base/raycluster.yaml", 'rayVersion: "2.60.0"', 'rayVersion: "2.59.0"', "base",
                          "rayVersion '2.59.0' != '2.60.0'"),
    "image-ray-version-drift": ("base/mlflow.yaml", "largebatch:0.1.0-ray2.60.0-py311",
                                "largebatch:0.1.0-ray2.59.0-py311", "base",
                                "image largebatch:0.1.0-ray2.59.0-py311 should be tagged"),
    "rayjob-cluster-drift": ("base/rayjob.yaml", "maxReplicas: 4", "maxReplicas: 5", "base", "rayClusterSpec differs"),
    "root-container": ("base/postgres.yaml", "runAsNonRoot: true", "runAsNonRoot: false", "base",
                       "runAsNonRoot must be true"),
    "missing-limits": ("base/postgres.yaml", '            limits:\n              cpu: "1"\n              memory: 1Gi\n'
                       '              ephemeral-storage: 1Gi\n', "",
                       "base", "resources missing limits.cpu, limits.memory"),
    "mlflow-without-allowed-hosts": ("base/mlflow.yaml", "- --allowed-hosts=", "- --no-allowed-hosts=", "base",
                                     "without --allowed-hosts"),
    "mlflow-allowed-hosts-miss-service": ("base/mlflow.yaml", "--allowed-hosts=mlflow:5000,", "--allowed-hosts=",
                                          "base", "does not allow 'mlflow:5000'"),
    "networkpolicy-selects-nothing": ("base/networkpolicy.yaml", "app.kubernetes.io/name: postgres\n  policyTypes",
                                      "app.kubernetes.io/name: postgresql\n  policyTypes", "base",
                                      "matches no pod template"),
    "missing-configmap": ("base/raycluster.yaml", "name: largebatch-config", "name: largebatch-cfg", "base",
                          "no ConfigMap 'largebatch-cfg'"),
    "secret-rendered": ("base/config.yaml", "  MLFLOW_TRACKING_URI: http://mlflow:5000\n",
                        "  MLFLOW_TRACKING_URI: http://mlflow:5000\n---\napiVersion: v1\nkind: Secret\n"
                        "metadata: {name: leaked}\nstringData: {password: CHANGE_ME}\n", "base",
                        "Secrets must not be rendered"),
    # kustomize's own refusals come through as problems, in kustomize's words
    "kustomize-missing-resource": ("base/kustomization.yaml", "  - config.yaml\n", "  - configs.yaml\n", "base",
                                   "kubectl kustomize"),
    "overlay-patch-hits-wrong-group": ("overlays/gpu/patches/raycluster-gpu.yaml", "value: gpu", "value: cpu",
                                       "overlays/gpu", "test failed"),
    "bad-submission-mode": ("base/rayjob.yaml", "submissionMode: K8sJobMode", "submissionMode: K8sJob", "base",
                            "submissionMode 'K8sJob' is not one of"),
}
# The locked-down cluster: one mutation per rule, each must be named by the validator.
HEX64 = "0123456789abcdef" * 4
HARDENING_MUTATIONS = {
    # NetworkPolicies
    "netpol-no-default-deny": ("base/networkpolicy.yaml",
                               'name: default-deny\nspec:\n  podSelector: {}\n  policyTypes: ["Ingress", "Egress"]',
                               'name: default-deny\nspec:\n  podSelector: {}\n  policyTypes: ["Ingress"]', "base",
                               "no default-deny NetworkPolicy"),
    "netpol-metadata-reachable": ("base/networkpolicy.yaml",
                                  "            except:\n              - 169.254.169.254/32\n", "",
                                  "base", "contains 169.254.169.254 (cloud metadata)"),
    "netpol-no-dns": ("base/networkpolicy.yaml", "        - protocol: UDP\n          port: 53",
                      "        - protocol: UDP\n          port: 54",
                      "base", "-> cluster DNS UDP 53 is refused"),
    "netpol-submitter-cut-off": ("base/networkpolicy.yaml",
                                 "              app.kubernetes.io/component: ray-head\n      ports:\n"
                                 "        - protocol: TCP\n          port: 8265",
                                 "              app.kubernetes.io/component: ray-head\n      ports:\n"
                                 "        - protocol: TCP\n          port: 8266",
                                 "base",
                                 "-> RayCluster/largebatch head TCP 8265 is refused but the deployment needs it"),
    "netpol-mlflow-open-to-all": ("base/networkpolicy.yaml",
                                  "    - from:\n        - podSelector:\n            matchLabels:\n"
                                  "              app.kubernetes.io/name: largebatch-ray\n      ports:\n"
                                  "        - protocol: TCP\n          port: 5000",
                                  "    - from:\n        - namespaceSelector: {}\n      ports:\n"
                                  "        - protocol: TCP\n          port: 5000",
                                  "base",
                                  "a pod in another namespace -> Deployment/mlflow TCP 5000 is allowed "
                                  "but must not be"),
    "netpol-autoscaler-cut-off": ("base/networkpolicy.yaml", "          port: 6443", "          port: 6444", "base",
                                  "head -> the Kubernetes API server (a typical control-plane address) "
                                  "TCP 6443 is refused"),
    "netpol-minio-clients-cut-off": ("overlays/dev/minio.yaml", "values: [largebatch-ray, mlflow, minio-bucket-init]",
                                     "values: [largebatch-ray, mlflow]", "overlays/dev",
                                     "Job/minio-bucket-init -> Deployment/minio TCP 9000 is refused"),
    # ServiceAccounts and API tokens
    "token-mounted-in-mlflow": ("base/mlflow.yaml", "automountServiceAccountToken: false",
                                "automountServiceAccountToken: true",
                                "base", "Deployment/mlflow: set automountServiceAccountToken: false"),
    "serviceaccount-automounts": ("base/serviceaccounts.yaml", "name: postgres\nautomountServiceAccountToken: false",
                                  "name: postgres\nautomountServiceAccountToken: true", "base",
                                  "ServiceAccount/postgres: set automountServiceAccountToken: false"),
    "default-serviceaccount": ("base/postgres.yaml", "      serviceAccountName: postgres\n", "", "base",
                               "StatefulSet/postgres: set serviceAccountName"),
    "autoscaler-head-without-token": ("base/raycluster.yaml", "automountServiceAccountToken: true",
                                      "automountServiceAccountToken: false", "base",
                                      "the Ray autoscaler sidecar needs the API token"),
    # Pod Security restricted, seccomp
    "ray-worker-without-seccomp": ("base/raycluster.yaml",
                                   "            seccompProfile:\n              type: RuntimeDefault\n", "",
                                   "base", "worker group cpu container ray-worker: "
                                           "set securityContext.seccompProfile.type: RuntimeDefault"),
    "host-network": ("base/postgres.yaml", "      serviceAccountName: postgres\n",
                     "      serviceAccountName: postgres\n      hostNetwork: true\n", "base",
                     "hostNetwork: true is not allowed"),
    "capabilities-kept": ("base/postgres.yaml", 'drop: ["ALL"]', 'drop: ["NET_RAW"]', "base",
                          'container postgres: set securityContext.capabilities.drop: ["ALL"]'),
    "namespace-not-restricted": ("namespace.yaml", "enforce: restricted", "enforce: baseline", "base",
                                 "set label pod-security.kubernetes.io/enforce: restricted"),
    # ephemeral storage, emptyDir sizes
    "no-ephemeral-storage-limit": ("base/postgres.yaml", "              ephemeral-storage: 1Gi\n", "", "base",
                                   "container postgres: resources missing limits.ephemeral-storage"),
    "unbounded-emptydir": ("base/postgres.yaml", "          emptyDir:\n            sizeLimit: 16Mi",
                           "          emptyDir: {}",
                           "base", "emptyDir volume run has no sizeLimit"),
    "no-ephemeral-storage-default": ("base/limitrange.yaml", "      default:\n        ephemeral-storage: 256Mi\n", "",
                                     "base", "no LimitRange gives Containers a default ephemeral-storage limit"),
    # PodDisruptionBudgets
    "no-pdb-for-ray-head": ("base/pdb.yaml", "app.kubernetes.io/component: ray-head",
                            "app.kubernetes.io/component: ray-hed",
                            "base", "no PodDisruptionBudget selects the Ray head pods"),
    "no-pdb-for-mlflow": ("base/pdb.yaml",
                          "  minAvailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: mlflow",
                          "  minAvailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: mlflw",
                          "base", "no PodDisruptionBudget selects the MLflow pods"),
    # MLflow: exact hosts, CORS, basic-auth with credentials from Secrets
    "mlflow-wildcard-host": ("base/mlflow.yaml", "--allowed-hosts=mlflow:5000,",
                             "--allowed-hosts=mlflow.*,mlflow:5000,", "base",
                             "--allowed-hosts entry 'mlflow.*' is a wildcard"),
    "mlflow-no-cors-origins": ("base/mlflow.yaml", "- --cors-allowed-origins=", "- --cors-origins-typo=", "base",
                               "set --cors-allowed-origins"),
    "mlflow-wildcard-cors": ("base/mlflow.yaml", "--cors-allowed-origins=http://localhost:5000",
                             "--cors-allowed-origins=*,http://localhost:5000", "base", "holds a wildcard"),
    "mlflow-without-auth": ("base/mlflow.yaml", "            - --app-name=basic-auth\n", "", "base",
                            "--app-name=basic-auth"),
    "mlflow-admin-password-inline": ("base/mlflow.yaml",
                                     "            - name: MLFLOW_AUTH_ADMIN_PASSWORD\n              valueFrom:\n"
                                     "                secretKeyRef:\n                  name: mlflow-auth\n"
                                     "                  key: password\n",
                                     "            - name: MLFLOW_AUTH_ADMIN_PASSWORD\n              value: hunter2\n",
                                     "base", "MLFLOW_AUTH_ADMIN_PASSWORD must come from a Secret"),
    "mlflow-without-csrf-key": ("base/mlflow.yaml", "- name: MLFLOW_FLASK_SERVER_SECRET_KEY",
                                "- name: FLASK_SECRET_KEY",
                                "base", "MLFLOW_FLASK_SERVER_SECRET_KEY must come from a Secret"),
    "ray-pods-without-mlflow-credentials": ("base/raycluster.yaml", "name: MLFLOW_TRACKING_PASSWORD",
                                            "name: MLFLOW_TRACKING_PASSWD", "base",
                                            "MLFLOW_TRACKING_PASSWORD must come from a Secret"),
    # image digests
    "image-neither-digest-nor-listed": ("base/postgres.yaml", "image: postgres:16.4", "image: postgres:16.5", "base",
                                        "image 'postgres:16.5' is not pinned by digest"),
    "image-malformed-digest": ("base/postgres.yaml", "image: postgres:16.4", "image: postgres:16.4@sha256:abc", "base",
                               "digest must be sha256:<64 lowercase hex>"),
    "image-digest-without-tag": ("base/postgres.yaml", "image: postgres:16.4", f"image: postgres@sha256:{HEX64}",
                                 "base", "write the tag beside the digest"),
}
MUTATIONS.update(HARDENING_MUTATIONS)
EXPECTED_DEFAULTS = {
    "missing-probe": "container mlflow: missing livenessProbe",
    "gpu-group-without-gpu-limit": "a GPU worker group must set resources.limits['nvidia.com/gpu'] >= 1",
}


@needs_kubectl
@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_mutation_is_caught(case, k8s_copy):
    rel, old, new, kustomization, expected = MUTATIONS[case]
    expected = expected or EXPECTED_DEFAULTS[case]
    _mutate(k8s_copy, rel, old, new)
    problems = validate_kustomization(k8s_copy / kustomization, repo_root=REPO)
    assert any(expected in p for p in problems), "\n".join(problems) or "(no problems)"


@needs_kubectl
def test_unmutated_copy_is_clean(k8s_copy):
    # the baseline for the mutation tests: the copy itself validates
    for rel in ("base", "overlays/dev", "overlays/gpu"):
        assert validate_kustomization(k8s_copy / rel, repo_root=REPO) == []


# ---- the renderer: the real kustomize ------------------------------------------------------------

@needs_kubectl
def test_base_holding_its_overlays_is_refused(tmp_path):
    # The layout k8s/ had before base/ existed: kustomize refuses a base whose folder contains the overlay
    # ("cycle detected"), so `kubectl apply -k` of an overlay failed even though a home-made renderer passed it.
    shutil.copytree(REPO / "k8s/base", tmp_path / "k8s")
    shutil.copytree(REPO / "k8s/overlays/gpu", tmp_path / "k8s/overlays/gpu")
    kfile = tmp_path / "k8s/overlays/gpu/kustomization.yaml"
    kfile.write_text(kfile.read_text().replace("../../base", "../.."))
    with pytest.raises(KustomizeError, match="cycle detected"):
        render_kustomization(tmp_path / "k8s/overlays/gpu")
    assert any("cycle detected" in p for p in validate_kustomization(tmp_path / "k8s/overlays/gpu", repo_root=REPO))


@needs_kubectl
def test_images_transformer_is_kustomizes(tmp_path):
    (tmp_path / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
        "  - {name: c, image: largebatch:0.1.0-ray2.60.0-py311}\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [pod.yaml]\nimages:\n- {name: largebatch, newName: reg.example/lb}\n")
    [pod] = render_kustomization(tmp_path)
    assert pod["spec"]["containers"][0]["image"] == "reg.example/lb:0.1.0-ray2.60.0-py311"


def test_missing_kubectl_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "kustomization.yaml").write_text("resources: []\n")
    monkeypatch.setenv("LARGEBATCH_KUBECTL", str(tmp_path / "no-such-kubectl"))
    with pytest.raises(KustomizeError, match="kubectl not found"):
        render_kustomization(tmp_path)


def test_split_image():
    assert split_image("reg:5000/a/b:1.2@sha256:ff") == ("reg:5000/a/b", "1.2", "sha256:ff")
    assert split_image("reg:5000/a/b") == ("reg:5000/a/b", "", "")


def test_strictify_closes_objects_with_properties_only():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}},
                                               "m": {"type": "object", "additionalProperties": {"type": "string"}},
                                               "free": {"type": "object"}}}
    strict = strictify(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert strict["properties"]["m"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in strict["properties"]["free"]
    assert "additionalProperties" not in schema  # the input is not modified
