"""deploy/: the Grafana dashboard and the Prometheus alert rules query only metrics the
services really export (read from live /metrics scrapes), cover what an operator watches,
and the rules pass `promtool check` and their unit tests in deploy/prometheus/alerts_test.yml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from service_kit.settings import PROJECT_ROOT
from tests.ops.conftest import MeteredPair, scrape

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "agent-pair.json"
DATASOURCES = PROJECT_ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
PROMETHEUS_DIR = PROJECT_ROOT / "deploy" / "prometheus"

# Series Prometheus writes itself for every scrape target; no service exports them.
PROMETHEUS_SYNTHESIZED = {"up"}
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}  # fmt: skip
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers once strings, label
    matchers, ranges and grouping clauses are removed, other than functions and keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", expr)
    return {name for name in found if name.lower() not in _KEYWORDS}


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'sum by (provider, le) (rate(execution_time_to_first_token_seconds_bucket{a="b"}'
        "[$__rate_interval])) * 3600 / 1e9 / on(job) group_left(instance) up"
        ' and histogram_quantile(0.99, x_total{reason=~"A|B"}) > bool 0'
    )
    assert metric_names(expr) == {"execution_time_to_first_token_seconds_bucket", "up", "x_total"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_rules() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    loaded = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def exported_names(text: str) -> set[str]:
    """Every sample name a /metrics text can carry, series with no samples yet included (a
    labelled metric shows only its HELP and TYPE lines until its first observation)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            name = name.removesuffix("_total")  # prometheus_client's TYPE line of a counter
            names.update(name + suffix for suffix in _SAMPLE_SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
async def exported(metered_pair: MeteredPair) -> set[str]:
    vault = await scrape(metered_pair.vault_metrics_port)
    execution = await scrape(metered_pair.execution_metrics_port)
    return exported_names(vault.text) | exported_names(execution.text)


async def test_every_dashboard_query_uses_exported_metrics(exported: set[str]) -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    assert not used - exported - PROMETHEUS_SYNTHESIZED, "metrics no service exports"
    # What an operator of the pair watches, each on some panel.
    assert {
        "execution_executions_finished_total",  # executions by state and reason
        "execution_time_to_first_token_seconds_bucket",
        "grpc_server_handling_seconds_bucket",  # Execute latency
        "execution_provider_retries_total",
        "execution_cost_nanodollars_total",
        "execution_key_cache_lookups_total",
        "keyvault_reveals_total",
        "execution_executions_in_flight",
        "service_database_up",
        "execution_records_pending",
        "execution_records_lost_total",
        "execution_executions_interrupted_total",
    } <= used


async def test_every_alert_uses_exported_metrics(exported: set[str]) -> None:
    rules = alert_rules()
    used = set().union(*(metric_names(rule["expr"]) for rule in rules))
    assert not used - exported - PROMETHEUS_SYNTHESIZED, "metrics no service exports"
    assert {
        "ExecutionFailureRatioHigh",
        "KeyVaultDown",
        "KeyVaultUnavailableToExecutions",
        "RevealAuditFailures",
        "ExecutionsInterrupted",
        "TimeToFirstTokenP99High",
        "DatabaseUnavailable",
    } <= {rule["alert"] for rule in rules}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_panels_query_the_provisioned_datasource() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    provisioned = yaml.safe_load((DATASOURCES / "prometheus.yml").read_text())["datasources"]
    uids = {source["uid"] for source in provisioned}
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    rules = run_promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = run_promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = run_promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_exported_metric_is_in_the_readme_table() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from service_kit import metrics

    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Metrics and logs", 1)[1].split("\n## ", 1)[0]
    documented = {
        name.removesuffix("_total") for name in re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    }
    defined = {
        family.name
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    }
    assert "service_database_up" in defined
    assert defined == documented
