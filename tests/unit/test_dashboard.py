"""The Grafana dashboard and the Prometheus wiring are consistent with the metrics we export."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy_checks import (
    DASHBOARD,
    ROOT,
    dashboard_exprs,
    dashboard_metric_names,
    iter_panels,
    load_dashboard,
    metric_names,
)

# The families the gateway (port 8000) and the workers (port 9200) export. Histograms are listed
# by family name; their series are <name>_bucket, _sum and _count.
EXPECTED_METRICS = frozenset(
    {
        # gateway
        "diffq_http_requests_total",
        "diffq_http_request_duration_seconds",
        "diffq_jobs_submitted_total",
        "diffq_jobs_finished_total",
        "diffq_queue_depth",
        "diffq_queue_evaluations",
        "diffq_queue_oldest_age_seconds",
        "diffq_workers_live",
        "diffq_build_info",
        # workers
        "diffq_model_load_seconds",
        "diffq_denoiser_call_duration_seconds",
        "diffq_batch_images",
        "diffq_batch_rows",
        "diffq_images_generated_total",
        "diffq_job_errors_total",
        "diffq_job_duration_seconds",
        "diffq_worker_jobs_in_flight",
        "diffq_worker_images_in_flight",
        "diffq_worker_busy_seconds_total",
        "diffq_job_retries_total",
        "diffq_job_reclaims_total",
        "diffq_dead_letters_total",
    }
)

# Each topic the dashboard must cover, by the family that carries it.
REQUIRED_TOPICS = (
    "diffq_job_duration_seconds",  # latency by phase
    "diffq_queue_depth",
    "diffq_queue_evaluations",  # queued work, the autoscaling signal
    "diffq_batch_images",  # batch size
    "diffq_worker_busy_seconds_total",  # per-worker busy fraction
    "diffq_http_requests_total",  # request rate and 5xx
    "diffq_images_generated_total",  # throughput
    "diffq_jobs_finished_total",  # jobs by outcome
)

DATASOURCE_UID = "prometheus"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def _data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in iter_panels(dashboard["panels"]) if p.get("type") != "row"]


def test_dashboard_has_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and isinstance(dashboard["uid"], str)
    assert dashboard["title"]
    assert _data_panels(dashboard)


def test_every_panel_queries_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    for panel in _data_panels(dashboard):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        assert panel.get("title"), where
        assert panel.get("datasource", {}).get("uid") == DATASOURCE_UID, where
        assert panel.get("datasource", {}).get("type") == "prometheus", where
        targets = panel.get("targets", [])
        assert targets and all(t.get("expr", "").strip() for t in targets), where
        for target in targets:
            assert target.get("datasource", {"uid": DATASOURCE_UID})["uid"] == DATASOURCE_UID, where


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))


def test_refids_are_unique_within_each_panel(dashboard: dict[str, Any]) -> None:
    for panel in _data_panels(dashboard):
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize("family", REQUIRED_TOPICS)
def test_dashboard_covers_topic(dashboard: dict[str, Any], family: str) -> None:
    panels = [
        panel["title"]
        for panel in _data_panels(dashboard)
        if any(family in metric_names(t["expr"]) for t in panel["targets"])
    ]
    assert panels, f"no panel queries {family}"


def test_dashboard_queries_only_exported_metrics() -> None:
    names = dashboard_metric_names(DASHBOARD)
    assert names, "no diffq_ metric found in the dashboard's queries"
    assert names <= EXPECTED_METRICS, f"not exported: {sorted(names - EXPECTED_METRICS)}"


def test_latency_panel_splits_by_phase_with_three_quantiles(dashboard: dict[str, Any]) -> None:
    exprs = [e for e in dashboard_exprs(dashboard) if "diffq_job_duration_seconds_bucket" in e]
    assert exprs and all("phase" in e for e in exprs)
    wanted = ("0.5", "0.95", "0.99")
    assert [q for q in wanted if any(f"histogram_quantile({q}," in e for e in exprs)] == list(wanted)


def test_metric_names_reads_families_not_strings() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(diffq_batch_images_bucket{job="diffq_fake_total"}[5m])))'
        " / on() group_left sum(diffq_queue_depth) + sum(rate(diffq_job_duration_seconds_count[1m]))"
    )
    assert metric_names(expr) == {"diffq_batch_images", "diffq_queue_depth", "diffq_job_duration_seconds"}


def test_datasource_provisioning_has_the_dashboard_uid() -> None:
    provisioning = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    [source] = [d for d in provisioning["datasources"] if d["type"] == "prometheus"]
    assert source["uid"] == DATASOURCE_UID
    assert source["url"] == "http://prometheus:9090"


def test_dashboard_provider_loads_the_mounted_dashboards() -> None:
    provider_file = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "diffq.yml"
    [provider] = yaml.safe_load(provider_file.read_text())["providers"]
    assert provider["type"] == "file"
    # docker-compose.yml mounts deploy/grafana/dashboards there.
    assert provider["options"]["path"] == "/etc/grafana/dashboards"


def _scraped(job: dict[str, Any]) -> set[tuple[str, int]]:
    """(host, port) pairs a scrape job reaches through static targets or DNS discovery."""
    found = set()
    for static in job.get("static_configs", []):
        for target in static["targets"]:
            host, _, port = target.rpartition(":")
            found.add((host, int(port)))
    for dns in job.get("dns_sd_configs", []):
        assert dns.get("type", "SRV") == "A", "Compose DNS has A records, not SRV"
        found |= {(name, int(dns["port"])) for name in dns["names"]}
    return found


def test_prometheus_scrapes_the_gateway_and_every_worker() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    assert len({j["job_name"] for j in jobs}) == len(jobs)
    targets = set().union(*(_scraped(job) for job in jobs))
    assert ("gateway", 8000) in targets
    assert ("worker", 9200) in targets
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs)
    # Every worker replica is scraped: the worker job discovers addresses by DNS, not one name.
    [worker_job] = [job for job in jobs if ("worker", 9200) in _scraped(job)]
    assert worker_job.get("dns_sd_configs")
