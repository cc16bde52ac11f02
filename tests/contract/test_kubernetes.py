"""deploy/kubernetes/ (docs/deployment.md "Kubernetes"), checked without a cluster:

- every manifest against the Kubernetes API schemas (``kubernetes-validate``, strict: an unknown field fails), for
  the oldest and the newest Kubernetes release the manifests are meant for; the custom resources (KEDA's, the
  Prometheus Operator's PodMonitor) against a JSON Schema of their CRDs written for these tests
  (tests/data/keda/README.md, tests/data/prometheus-operator/); no kind goes unchecked;
- what the manifests say about the app against the app: every ``ATELIER_*`` variable they set is a setting, with a
  value Settings accepts; probe paths are routes of the gateway and probe, Service and scrape ports are the port it
  listens on; the worker's queue, GPU, grace period, metrics port; KEDA reads the gateway Service's ``GET /queue``
  (a route of the app, the Service's DNS name and port, a field of the answer) and scales the worker Deployment;
- the models: the ConfigMap's models.yaml is a valid models config, every model it serves lies on the read-only
  volume, and it is exactly what the pull Job's ``atelier pull`` writes.

The base is a Kustomization with ``resources:`` only, so rendering it is reading those files (checked here; where
kubectl is installed, its own Kustomize renders the base and the README's example overlay, compared and validated).
"""
from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.cli.pull import pulled_config, read_config
from app.contract.registry import Registry
from app.contract.settings import Settings
from app.main import app

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
#: The files of deploy/kubernetes/ that the kustomization leaves out on purpose (kustomization.yaml says why).
OUTSIDE_BASE = {"secrets.example.yaml", "models-pull-job.yaml", "podmonitor.yaml"}
#: The oldest Kubernetes the manifests are written for (policy/v1, batch/v1 ttlSecondsAfterFinished, KEDA 2.x's
#: own minimum), and the newest the installed kubernetes-validate knows.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
#: The custom resources, each with the JSON Schema of its CRD written for these tests (the README or header of each
#: file says from what): KEDA's, and the Prometheus Operator's PodMonitor.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ROOT / "tests/data/keda/scaledobject.schema.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): ROOT / "tests/data/prometheus-operator/podmonitor.schema.yaml",
}
CRD_KINDS = {kind for _, kind in CRD_SCHEMAS}
#: boto3's own environment variables the manifests may set (docs/deployment.md "Object storage").
AWS_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"}
#: A heavy job of the docs' "Time budget" example (1024x1024, 30 steps, 4 images): a worker's grace period lets it end.
REFERENCE_JOB = {"megapixels": 1024 * 1024 / 1e6, "steps": 30, "images": 4}


# --- reading the manifests -------------------------------------------------------------------------------------

@cache
def documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) of every YAML document under deploy/kubernetes/ (shared: a test that edits one
    edits a ``copy.deepcopy``)."""
    found = []
    for path in sorted(K8S.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((str(path.relative_to(K8S)), doc))
    return tuple(found)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object (the kustomization itself is not one)."""
    return [(f, d) for f, d in documents() if d.get("kind") != "Kustomization"]


@cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def base() -> list[dict[str, Any]]:
    """The rendered base: the documents of the kustomization's resources, in order."""
    files = kustomization()["resources"]
    return [d for name in files for f, d in manifests() if f == name]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in manifests() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/kubernetes, found {len(found)}"
    return found[0]


def deployment(component: str) -> dict[str, Any]:
    found = [d for _, d in manifests() if d["kind"] == "Deployment"
             and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {component} Deployment, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container per pod"
    return containers[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def environment(workload: dict[str, Any]) -> dict[str, str | None]:
    """The variables a workload's container gets: from its ConfigMaps (envFrom) and its env (a Secret's value:
    the value of the example Secret, None when optional and absent)."""
    c = container(workload)
    env: dict[str, str | None] = {}
    for source in c.get("envFrom", []):
        assert set(source) == {"configMapRef"}, "envFrom only from ConfigMaps (secrets by name, in env)"
        env.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_data(ref["name"]).get(ref["key"])
    return env


def secret_data(name: str) -> dict[str, str]:
    return one("Secret", name)["stringData"]


def port_of(c: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a container port's name) as the number it reaches."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in c["ports"] if p.get("name") == port]
    assert named, f"no container port named {port!r} in {c['name']}"
    return named[0]


def argument(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {shlex.join(command)}"
    return command[command.index(flag) + 1]


def settings_field(variable: str) -> str | None:
    """The Settings field an environment variable sets, or None when it sets none."""
    prefix = Settings.model_config["env_prefix"]
    name = variable.removeprefix(prefix).lower()
    return name if variable.startswith(prefix) and name in Settings.model_fields else None


# --- the kustomization and the schemas ----------------------------------------------------------------------

def test_the_base_is_its_resources_only():
    """kustomization.yaml has no transformer (the rendered base is the files as they are), lists files that exist,
    and every other file of the folder is one of the documented exceptions."""
    k = kustomization()
    assert set(k) == {"apiVersion", "kind", "resources"}, "resources only: a transformer would change the rendering"
    listed = set(k["resources"])
    assert all((K8S / f).is_file() for f in listed), listed
    yaml_files = {str(p.relative_to(K8S)) for p in K8S.rglob("*.y*ml")} - {"kustomization.yaml"}
    assert yaml_files - listed == OUTSIDE_BASE
    names = [(d["kind"], d["metadata"]["name"]) for _, d in manifests()]
    assert len(names) == len(set(names)), "each object once"
    assert {d["kind"] for d in base()} >= {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap",
                                           "PersistentVolumeClaim", "ScaledObject"}


def readme_overlay() -> str:
    """The example overlay of deploy/kubernetes/README.md "An overlay" (a kustomization.yaml)."""
    overlay = re.search(r"```yaml\n(# my-atelier/kustomization.yaml\n.*?)```", (K8S / "README.md").read_text(), re.S)
    assert overlay, "README.md shows no my-atelier/kustomization.yaml"
    return overlay.group(1)


def kubectl_kustomize(folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def canonical(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(d, sort_keys=True) for d in docs)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kustomize_renders_the_base_and_the_readme_overlay(tmp_path):
    """Where kubectl is installed, its own Kustomize renders the base to exactly the documents read above, and
    renders the overlay README.md shows (image, namespace and patches applied) to manifests that still validate."""
    assert canonical(kubectl_kustomize(K8S)) == canonical(base())
    shutil.copytree(K8S, tmp_path / "deploy" / "kubernetes")
    (tmp_path / "my-atelier").mkdir()
    (tmp_path / "my-atelier" / "kustomization.yaml").write_text(readme_overlay())
    rendered = kubectl_kustomize(tmp_path / "my-atelier")
    assert len(rendered) == len(base())
    for doc in rendered:
        assert doc["metadata"]["namespace"] == "atelier"
        if doc["kind"] in CRD_KINDS:
            assert crd_validator(doc["kind"]).is_valid(doc), doc["metadata"]["name"]
        else:
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
        if doc["kind"] == "Deployment":
            assert container(doc)["image"] == "registry.mycompany.com/atelier:0.1.0"
        if doc["kind"] == "ScaledObject":  # the namespace does not reach a URL: the gateway's is the overlay's
            url = urlsplit(doc["spec"]["triggers"][0]["metadata"]["url"])
            assert url.hostname == f"atelier-gateway.{doc['metadata']['namespace']}.svc.cluster.local"
            assert doc["spec"]["maxReplicaCount"] == 4
    [env] = [d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "atelier-env"]
    assert env["data"]["ATELIER_STORAGE_URL"] == "s3://my-bucket/atelier"


def _label(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


KUBE_OBJECTS = [m for m in manifests() if m[1]["kind"] not in CRD_KINDS]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("item", KUBE_OBJECTS, ids=[_label(m) for m in KUBE_OBJECTS])
def test_manifest_is_valid_for_kubernetes(item, version):
    kubernetes_validate.validate(item[1], version, strict=True)


def test_kubernetes_validation_refuses_a_wrong_manifest():
    """The validation above can fail: an unknown field, a wrong type, a missing required field."""
    good = deployment("worker")
    kubernetes_validate.validate(good, KUBE_VERSIONS[-1], strict=True)
    unknown = copy.deepcopy(good)
    unknown["spec"]["template"]["spec"]["containers"][0]["gracePeriod"] = 30
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["replicas"] = "two"
    missing = copy.deepcopy(good)
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    for bad in (unknown, wrong_type, missing):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBE_VERSIONS[-1], strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # a custom resource is not for this validation
        kubernetes_validate.validate(one("ScaledObject"), KUBE_VERSIONS[-1], strict=True)


@cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    [path] = [p for (_, k), p in CRD_SCHEMAS.items() if k == kind]
    schema = yaml.safe_load(path.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


CRD_OBJECTS = [m for m in manifests() if m[1]["kind"] in CRD_KINDS]


@pytest.mark.parametrize("item", CRD_OBJECTS, ids=[_label(m) for m in CRD_OBJECTS])
def test_custom_resource_is_valid_for_its_crd(item):
    doc = item[1]
    assert (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in crd_validator(doc["kind"]).iter_errors(doc)]
    assert not errors, errors


def test_keda_schema_refuses_what_keda_would():
    scaled = one("ScaledObject")
    validator = crd_validator("ScaledObject")
    assert validator.is_valid(scaled)

    def changed(edit) -> dict[str, Any]:
        doc = copy.deepcopy(scaled)
        edit(doc)
        return doc

    def metadata(trigger: dict[str, Any] | None = None, **edit: str | int | None) -> dict[str, Any]:
        """The ScaledObject with its trigger (or ``trigger`` instead) and that trigger's metadata changed (a value
        None: the parameter removed)."""
        doc = copy.deepcopy(scaled)
        if trigger is not None:
            doc["spec"]["triggers"] = [copy.deepcopy(trigger)]
        meta = doc["spec"]["triggers"][0]["metadata"]
        meta.update(edit)
        for k in [k for k, v in meta.items() if v is None]:
            del meta[k]
        return doc

    redis_list = {"type": "redis", "metadata": {"address": "redis.data:6379", "listName": "atelier",
                                                "listLength": "2"}}

    def redis_trigger(**edit: str | int | None) -> dict[str, Any]:
        return metadata(redis_list, **edit)

    assert validator.is_valid(redis_trigger()), "the redis scaler's branch accepts a complete trigger"
    assert validator.is_valid(metadata(targetValue="2.5", activationTargetValue="0", format="json"))
    bad = {
        "an unknown spec field": changed(lambda d: d["spec"].update(minReplicas=1)),
        "no scaleTargetRef name": changed(lambda d: d["spec"]["scaleTargetRef"].pop("name")),
        "a count that is not an integer": changed(lambda d: d["spec"].update(maxReplicaCount="8")),
        "a number where KEDA wants a string": metadata(targetValue=2),
        "a metrics-api trigger without url": metadata(url=None),
        "a metrics-api trigger without valueLocation": metadata(valueLocation=None),
        "a metrics-api trigger without targetValue": metadata(targetValue=None),
        "a target of 0": metadata(targetValue="0"),
        "a target that is not a number": metadata(targetValue="two"),
        "a url that is not http(s)": metadata(url="atelier-gateway:80/queue"),
        "an unknown format": metadata(format="csv"),
        "a redis trigger without listName": redis_trigger(listName=None),
        "a redis trigger without an address": redis_trigger(address=None),
        "a redis trigger's length as a number": redis_trigger(listLength=2),
    }
    for what, doc in bad.items():
        assert not validator.is_valid(doc), what


def test_every_object_is_checked():
    """No kind slips through both validations."""
    assert {d["kind"] for _, d in CRD_OBJECTS} == CRD_KINDS
    assert len(KUBE_OBJECTS) + len(CRD_OBJECTS) == len(manifests())


# --- settings and references ------------------------------------------------------------------------------

def test_every_atelier_variable_is_a_setting_with_a_valid_value():
    """Every ATELIER_* name the manifests set (container env, ConfigMap data, Secret stringData) is a field of
    Settings, and the values, together, are accepted by Settings; the other variables are boto3's or KEDA's."""
    set_anywhere: dict[str, str] = {}
    for _, doc in manifests():
        if doc["kind"] == "ConfigMap":
            set_anywhere.update({k: v for k, v in doc["data"].items() if k.isupper()})
        if doc["kind"] == "Secret":
            set_anywhere.update({k: v for k, v in doc["stringData"].items() if k.isupper()})
        if doc["kind"] in ("Deployment", "Job"):
            for var in container(doc).get("env", []):
                set_anywhere.setdefault(var["name"], var.get("value", ""))
    atelier = {k: v for k, v in set_anywhere.items() if k.startswith("ATELIER_")}
    unknown = sorted(k for k in atelier if settings_field(k) is None)
    assert not unknown, f"not settings of app/contract/settings.py: {unknown}"
    assert set(set_anywhere) - set(atelier) <= AWS_VARIABLES | {"HF_TOKEN"}
    for component in ("gateway", "worker"):
        env = environment(deployment(component))
        values = {settings_field(k): v for k, v in env.items() if settings_field(k)}
        Settings(_env_file=None, **values)  # raises on a value the service would refuse at start


def test_references_name_objects_that_exist():
    """Every Secret, ConfigMap and volume claim a pod refers to is one of the manifests, with the key it names."""
    for _, doc in manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = pod_spec(doc)
        for c in spec["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in secret_data(ref["name"]), f"{var['name']}: {ref}"
                elif ref:
                    one("Secret", ref["name"])
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounted == {v["name"] for v in spec.get("volumes", [])}, "every volume mounted, every mount a volume"
        for v in spec.get("volumes", []):
            if "secret" in v:
                one("Secret", v["secret"]["secretName"])
            if "configMap" in v:
                one("ConfigMap", v["configMap"]["name"])
            if "persistentVolumeClaim" in v:
                one("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])


def test_one_image_for_every_container():
    """One placeholder to change (Dockerfile.gpu builds the one image of the gateway, the workers and the pull)."""
    images = {c["image"] for _, d in manifests() if d["kind"] in ("Deployment", "Job")
              for c in pod_spec(d)["containers"]}
    assert len(images) == 1, images


# --- the gateway ------------------------------------------------------------------------------------------

def get_routes() -> set[str]:
    return {r.path for r in app.routes if "GET" in (getattr(r, "methods", None) or ())}


def test_gateway_probes_and_ports_exist_in_the_app():
    gw = deployment("gateway")
    c = container(gw)
    command = c["command"]
    assert command[:4] == ["python", "-m", "uvicorn", "app.main:app"]
    port = int(argument(command, "--port"))
    assert argument(command, "--host") == "0.0.0.0"
    assert [p["containerPort"] for p in c["ports"]] == [port]
    routes = get_routes()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez", "a liveness probe that reads Redis restarts every" \
        " gateway during a Redis outage"
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in routes, f"{probe}: {get['path']} is not a GET route of app.main"
        assert port_of(c, get["port"]) == port
    service = one("Service", gw["metadata"]["name"])
    assert service["spec"]["selector"] == gw["spec"]["selector"]["matchLabels"]
    assert [port_of(c, p["targetPort"]) for p in service["spec"]["ports"]] == [port]
    pdb = one("PodDisruptionBudget", gw["metadata"]["name"])
    assert pdb["spec"]["selector"] == gw["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] < gw["spec"]["replicas"], "a drain can still move a gateway"
    scrape = gw["spec"]["template"]["metadata"]["annotations"]
    assert int(scrape["prometheus.io/port"]) == port and scrape["prometheus.io/path"] in routes
    # the key file the gateway reads is the Secret's keys.yaml, mounted where ATELIER_KEYS_FILE says
    keys_file = PurePosixPath(environment(gw)["ATELIER_KEYS_FILE"])
    mount = next(m for m in c["volumeMounts"] if PurePosixPath(m["mountPath"]) == keys_file.parent)
    volume = next(v for v in pod_spec(gw)["volumes"] if v["name"] == mount["name"])
    keys_yaml = secret_data(volume["secret"]["secretName"])[keys_file.name]
    assert yaml.safe_load(keys_yaml)["keys"][0]["PublicKey"]


def test_prometheus_scrapes_gateways_and_workers():
    """The PodMonitor (for the Prometheus Operator) selects both kinds of pod, at ports they have, at /metrics; the
    pods' prometheus.io annotations (plain Prometheus) say the same (checked with each Deployment)."""
    monitor = one("PodMonitor")
    assert crd_validator("PodMonitor").is_valid(monitor)
    wanted = monitor["spec"]["selector"]["matchLabels"]
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    for component in ("gateway", "worker"):
        wl = deployment(component)
        labels = wl["spec"]["template"]["metadata"]["labels"]
        assert wanted.items() <= labels.items(), f"the PodMonitor does not select the {component}s"
        names = {p.get("name") for p in container(wl)["ports"]}
        [endpoint] = [e for e in endpoints if e["port"] in names]
        annotations = wl["spec"]["template"]["metadata"]["annotations"]
        assert port_of(container(wl), endpoint["port"]) == int(annotations["prometheus.io/port"])
        assert endpoint["path"] == annotations["prometheus.io/path"] == "/metrics"
    assert "/metrics" in get_routes()
    bad = copy.deepcopy(monitor)
    bad["spec"]["podMetricsEndpoints"][0]["targetPorts"] = "http"
    assert not crd_validator("PodMonitor").is_valid(bad)


# --- the worker -------------------------------------------------------------------------------------------

def test_worker_gpu_queue_shutdown_and_metrics():
    wk = deployment("worker")
    c = container(wk)
    env = environment(wk)
    command = c["command"]
    # exec form, Celery itself as the process that gets SIGTERM (warm shutdown; REMAP_SIGTERM would make it cold)
    assert command[:6] == ["python", "-m", "celery", "-A", "workers.celery_app", "worker"]
    assert argument(command, "--pool") == "solo" and argument(command, "--concurrency") == "1"
    assert "%h" in argument(command, "-n"), "each pod's hostname keeps the worker's name unique"
    assert "REMAP_SIGTERM" not in env
    queue = env.get("ATELIER_QUEUE") or Settings.model_fields["queue"].default
    assert argument(command, "-Q") == queue
    limits = c["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == 1
    assert env["ATELIER_DEVICE"].startswith("cuda")
    defaults = Settings.model_fields
    base_s = float(env.get("ATELIER_JOB_TIME_BASE_S") or defaults["job_time_base_s"].default)
    per_s = float(env.get("ATELIER_JOB_TIME_PER_MEGAPIXEL_STEP_S") or defaults["job_time_per_megapixel_step_s"].default)
    reference = base_s + per_s * REFERENCE_JOB["megapixels"] * REFERENCE_JOB["steps"] * REFERENCE_JOB["images"]
    grace = pod_spec(wk)["terminationGracePeriodSeconds"]
    assert grace >= base_s and grace >= reference, (grace, base_s, reference)
    metrics = int(env["ATELIER_WORKER_METRICS_PORT"])
    assert "ATELIER_WORKER_INDEX" not in env  # one worker per pod: the port itself
    assert [p["containerPort"] for p in c["ports"]] == [metrics]
    assert port_of(c, c["readinessProbe"]["httpGet"]["port"]) == metrics
    assert "livenessProbe" not in c, "a liveness probe would kill workers mid-job"
    scrape = wk["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/scrape"] == "true" and int(scrape["prometheus.io/port"]) == metrics
    assert wk["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# --- autoscaling ------------------------------------------------------------------------------------------

def test_keda_scales_the_workers_on_the_gateways_queue_answer(api):
    """KEDA's metrics-api scaler reads ``GET /queue`` of the gateway Service, by its cluster DNS name (KEDA runs in
    its own namespace) in the namespace the README deploys to, at the Service's port; ``valueLocation`` is the field
    of the answer that counts the waiting jobs (asked here of the app itself)."""
    wk, gw = deployment("worker"), deployment("gateway")
    scaled = one("ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == wk["metadata"]["name"]
    assert "replicas" not in wk["spec"], "every apply would reset the count KEDA set"
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    assert scaled["spec"]["minReplicaCount"] >= 1, "a gateway is ready only while a live worker consumes its queue"
    assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api" and "authenticationRef" not in trigger
    meta = trigger["metadata"]
    url = urlsplit(meta["url"])
    service = one("Service", gw["metadata"]["name"])
    namespace = yaml.safe_load(readme_overlay())["namespace"]
    assert url.scheme == "http", "the Service speaks plain HTTP (uvicorn, no TLS)"
    assert url.hostname == f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    [port] = service["spec"]["ports"]
    assert (url.port or 80) == port["port"], "the Service's port, not the container's"
    assert port_of(container(gw), port["targetPort"]) == int(argument(container(gw)["command"], "--port"))
    assert url.path == "/queue" and url.path in get_routes() and not url.query
    assert float(meta["targetValue"]) > 0 and meta.get("format", "json") == "json"
    answer = api.client.get(url.path)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert meta["valueLocation"] == "waiting" and meta["valueLocation"] in body  # a top-level key: its GJSON path
    assert isinstance(body[meta["valueLocation"]], int)
    # the gateway answers for its ATELIER_QUEUE, which must be the queue the workers consume
    assert body["queue"] == api.queue
    gw_queue = environment(gw).get("ATELIER_QUEUE") or Settings.model_fields["queue"].default
    assert gw_queue == argument(container(wk)["command"], "-Q")


# --- models -------------------------------------------------------------------------------------------------

def mount_of(workload: dict[str, Any], volume: str) -> dict[str, Any]:
    [m] = [m for m in container(workload)["volumeMounts"] if m["name"] == volume]
    return m


def models_config_volume(workload: dict[str, Any]) -> tuple[PurePosixPath, dict[str, Any]]:
    """Where a workload's ATELIER_MODELS_CONFIG is, and the models config it reads from its ConfigMap."""
    path = PurePosixPath(environment(workload)["ATELIER_MODELS_CONFIG"])
    [volume] = [v for v in pod_spec(workload)["volumes"] if "configMap" in v
                and PurePosixPath(mount_of(workload, v["name"])["mountPath"]) == path.parent]
    assert "subPath" not in mount_of(workload, volume["name"]), "a subPath mount never sees an edit"
    data = one("ConfigMap", volume["configMap"]["name"])["data"]
    return path, yaml.safe_load(data[path.name])


def test_models_config_is_valid_and_read_from_the_volume():
    wk, gw = deployment("worker"), deployment("gateway")
    path, doc = models_config_volume(wk)
    assert models_config_volume(gw) == (path, doc), "gateway and workers serve the same config"
    registry = Registry.from_dict(doc, Path(str(path.parent)), origin="models-config.yaml")
    assert registry.default_main() is not None
    [claim] = [v for v in pod_spec(wk)["volumes"] if "persistentVolumeClaim" in v]
    models = mount_of(wk, claim["name"])
    assert models["readOnly"] is True and claim["persistentVolumeClaim"]["readOnly"] is True
    sources = [e.source for e in registry.entries() if e.source is not None] + [registry.translator]
    local = [PurePosixPath(str(registry.resolve_path(s.path or s.file))) for s in sources if s and (s.path or s.file)]
    assert local, "the shipped config serves model files"
    outside = [str(p) for p in local if not p.is_relative_to(models["mountPath"])]
    assert not outside, f"not on the models volume ({models['mountPath']}): {outside}"
    pvc = one("PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "written by the pull Job while workers on other nodes read"


def test_the_pull_job_fills_the_volume_with_what_the_config_serves():
    """The ConfigMap's models.yaml is what ``atelier pull`` (the Job's command, in the image built by
    Dockerfile.gpu) writes into /models, its paths made absolute: the workers find every model where it was put."""
    job = one("Job")
    c = container(job)
    command = c["command"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[:2] == ["atelier", "pull"] and "atelier" in scripts
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    workdir = re.search(r"^WORKDIR\s+(\S+)", dockerfile, re.M).group(1)
    config = PurePosixPath(argument(command, "--config"))
    folder = config.relative_to(workdir).parts[0]
    assert re.search(rf"^COPY\s+{folder}\s+{folder}\s*$", dockerfile, re.M), f"Dockerfile.gpu does not ship {folder}/"
    dest = PurePosixPath(argument(command, "--dest"))
    output = PurePosixPath(argument(command, "--output"))
    assert config.is_relative_to(workdir), "a config shipped in the image"
    shipped = ROOT / config.relative_to(workdir)
    pulled = pulled_config(read_config(shipped), Path(str(config)), Path(str(dest)), Path(str(output)))

    def absolute(source: Any) -> Any:
        if isinstance(source, dict):
            return {k: str(PurePosixPath(output.parent, v)) if k in ("path", "file") else v for k, v in source.items()}
        return source

    for entry in pulled.get("models", []):
        if "source" in entry:
            entry["source"] = absolute(entry["source"])
    if pulled.get("translator"):
        pulled["translator"] = absolute(pulled["translator"])
    _, served = models_config_volume(deployment("worker"))
    assert served == pulled, "models-config.yaml must serve what the pull writes:\n" + yaml.safe_dump(pulled)
    [claim] = [v for v in pod_spec(job)["volumes"] if "persistentVolumeClaim" in v]
    assert mount_of(job, claim["name"])["mountPath"] == str(dest)
    assert not mount_of(job, claim["name"]).get("readOnly")
    [worker_claim] = [v for v in pod_spec(deployment("worker"))["volumes"] if "persistentVolumeClaim" in v]
    assert worker_claim["persistentVolumeClaim"]["claimName"] == claim["persistentVolumeClaim"]["claimName"]
    assert mount_of(deployment("worker"), worker_claim["name"])["mountPath"] == str(dest)
