"""How the compose services find each other: the OpenTelemetry collector's pipeline, the OTLP
endpoints the collector proxy and vLLM export to, and Grafana's provisioned datasources and
dashboard path, all checked against compose/compose.yaml.

No OpenTelemetry collector, Jaeger or Grafana runs on the project's machines, so these are
structural checks: every component a pipeline names is defined, every URL names a compose service
and a port that service listens on inside the network, every provisioned path is mounted.
Whether otelcol-contrib accepts the config (`otelcol-contrib validate`) and whether Jaeger stores
the spans is not checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from loadgen.settings import ROOT
from tests.support.compose import (
    BASE,
    COMPOSE_DIR,
    container_ports,
    env_with_secrets,
    load_stack,
    repo_mounts,
    services_of,
)

OTEL_CONFIG = COMPOSE_DIR / "otel-collector.yaml"
# Ports a service listens on inside the compose network without publishing them.
UNPUBLISHED = {"jaeger": {4317, 4318, 13133}}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return services_of(load_stack((BASE,), env_with_secrets()))


@pytest.fixture(scope="module")
def otel() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(OTEL_CONFIG.read_text())
    return config


def listens(services: dict[str, dict[str, Any]], url: str) -> tuple[str, int]:
    """(service, port) of a URL, asserting that the service listens on that port."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    assert parts.hostname in services, f"{url}: {parts.hostname} is no compose service"
    port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    ports = container_ports(services[parts.hostname]) | UNPUBLISHED.get(parts.hostname, set())
    assert port in ports, f"{url}: {parts.hostname} listens on {sorted(ports)}"
    return parts.hostname, port


def test_otel_collector_mounts_this_config(services: dict[str, dict[str, Any]]) -> None:
    service = services["otel-collector"]
    mounts = dict(repo_mounts(service))
    assert mounts.get(OTEL_CONFIG.resolve()) == "/etc/otelcol-contrib/config.yaml"
    assert service["command"] == ["--config=/etc/otelcol-contrib/config.yaml"]


def test_every_pipeline_component_is_defined(otel: dict[str, Any]) -> None:
    pipelines = otel["service"]["pipelines"]
    assert "traces" in pipelines
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in (otel.get(kind) or {}), f"pipeline {name}: {kind[:-1]} {component} is not defined"
        # memory_limiter first, as the collector's docs ask: it must see data before anything buffers it.
        assert pipeline["processors"][0] == "memory_limiter"
    for extension in otel["service"].get("extensions", []):
        assert extension in otel["extensions"]


def test_otlp_receivers_listen_on_the_published_ports(otel: dict[str, Any],
                                                    services: dict[str, dict[str, Any]]) -> None:
    protocols = otel["receivers"]["otlp"]["protocols"]
    ports = {int(protocols[name]["endpoint"].rsplit(":", 1)[1]) for name in ("grpc", "http")}
    assert ports == {4317, 4318}
    assert container_ports(services["otel-collector"]) == ports
    for protocol in protocols.values():
        assert protocol["endpoint"].startswith("0.0.0.0:"), "reachable from the other containers"


def test_traces_go_to_the_trace_store(otel: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    for exporter in otel["service"]["pipelines"]["traces"]["exporters"]:
        host, port = listens(services, otel["exporters"][exporter]["endpoint"])
        assert (host, port) == ("jaeger", 4317)


def test_proxy_and_vllm_export_to_the_otel_collector(services: dict[str, dict[str, Any]]) -> None:
    collector_env = services["collector"]["environment"]
    assert listens(services, collector_env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otel-collector", 4318)
    assert collector_env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    vllm = services["vllm"]
    endpoint = vllm["command"][vllm["command"].index("--otlp-traces-endpoint") + 1]
    assert listens(services, endpoint) == ("otel-collector", 4318)
    # vLLM hands the URL to its exporter as is, so the OTLP/HTTP path is spelled out.
    assert urlsplit(endpoint).path == "/v1/traces"
    assert vllm["environment"]["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"


def provisioned(kind: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for path in sorted((ROOT / "grafana" / "provisioning" / kind).glob("*.y*ml")):
        entries += yaml.safe_load(path.read_text()).get("datasources" if kind == "datasources" else "providers", [])
    return entries


def test_grafana_datasources_name_compose_services(services: dict[str, dict[str, Any]]) -> None:
    datasources = provisioned("datasources")
    assert {source["type"] for source in datasources} >= {"prometheus", "jaeger"}
    for source in datasources:
        listens(services, source["url"])
    # Exemplar links point at the trace store's datasource.
    uids = {source["uid"]: source["type"] for source in datasources}
    for source in datasources:
        for link in source.get("jsonData", {}).get("exemplarTraceIdDestinations", []):
            assert uids.get(link["datasourceUid"]) == "jaeger", link


def test_grafana_mounts_what_its_provisioning_reads(services: dict[str, dict[str, Any]]) -> None:
    mounts = {target: host for host, target in repo_mounts(services["grafana"])}
    assert mounts["/etc/grafana/provisioning"] == (ROOT / "grafana" / "provisioning").resolve()
    for provider in provisioned("dashboards"):
        path = provider["options"]["path"]
        assert path in mounts, f"dashboard provider reads {path}, which grafana does not mount"
        host: Path = mounts[path]
        assert list(host.glob("*.json")), f"{host.relative_to(ROOT)} holds no dashboards"
    for volume in services["grafana"]["volumes"]:
        if str(volume).startswith("../"):
            assert str(volume).endswith(":ro"), f"{volume}: provisioning is mounted read-only"
