"""`make run`: the whole pair on one machine with development defaults.

Creates development certificates and a development master key when missing, allowlists
loopback for provider calls (a local emulator) unless PROVIDER_ALLOWED_HOSTS is set, starts
the embedded PostgreSQL when a service has no database URL, then runs both services in the
foreground. Ctrl-C (or SIGTERM) drains both and stops the database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from service_kit import devcerts, embedded_pg
from service_kit.egress import ALLOWLIST_ENV
from service_kit.settings import PROJECT_ROOT

DEV_MASTER_KEY_FILE = PROJECT_ROOT / ".run" / "dev-master-keys"
# Development keys may point at a local provider emulator or model server on loopback.
DEV_ALLOWED_HOSTS = "127.0.0.1,::1,localhost"
SERVICES = {
    "keyvault": ("keyvault_service", "KEYVAULT_DATABASE_URL"),
    "execution": ("execution_service", "EXECUTION_DATABASE_URL"),
}


def dev_master_keys() -> str:
    """A persistent development keyring (git-ignored), so stored keys survive restarts."""
    if not DEV_MASTER_KEY_FILE.exists():
        from keyvault_service.keyring import generate_master_key

        DEV_MASTER_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        DEV_MASTER_KEY_FILE.write_text(f"1:{generate_master_key()}\n")
        DEV_MASTER_KEY_FILE.chmod(0o600)
    return DEV_MASTER_KEY_FILE.read_text().strip()


async def prepare_environment(env: dict[str, str]) -> None:
    certs_dir = Path(env.get("CERTS_DIR") or PROJECT_ROOT / "certs")
    if devcerts.write_dev_certs(certs_dir):
        print(f"devstack: wrote development certificates to {certs_dir}/", flush=True)
    if not env.get("KEYVAULT_MASTER_KEYS") and not env.get("ENCRYPTION_KEY"):
        env["KEYVAULT_MASTER_KEYS"] = dev_master_keys()
        print(f"devstack: using the development master key in {DEV_MASTER_KEY_FILE}", flush=True)
    if ALLOWLIST_ENV not in env:
        env[ALLOWLIST_ENV] = DEV_ALLOWED_HOSTS
        print(f"devstack: provider calls may reach loopback ({ALLOWLIST_ENV})", flush=True)
    missing = [var for _, var in SERVICES.values() if not env.get(var)]
    if missing:
        server = embedded_pg.start()
        uri = server.get_uri()
        for name, (_, var) in SERVICES.items():
            if not env.get(var):
                env[var] = await embedded_pg.ensure_database(uri, name)
        print(f"devstack: embedded PostgreSQL in {embedded_pg.DEFAULT_DATA_DIR}", flush=True)


async def run_services(env: dict[str, str], names: list[str]) -> int:
    processes = {
        name: await asyncio.create_subprocess_exec(sys.executable, "-m", SERVICES[name][0], env=env)
        for name in names
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = {asyncio.create_task(p.wait()): name for name, p in processes.items()}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*waits, stopper], return_when=asyncio.FIRST_COMPLETED)
    exited = [waits[t] for t in done if t in waits]
    if exited:
        print(f"devstack: {', '.join(exited)} exited; stopping the others", flush=True)
    for process in processes.values():
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(p.wait() for p in processes.values()))
    return 0 if not exited else max(abs(c) for c in codes) or 1


async def main() -> int:
    env = dict(os.environ)
    try:
        await prepare_environment(env)
    except embedded_pg.EmbeddedPostgresMissing as exc:
        print(f"devstack: error: {exc}", file=sys.stderr, flush=True)
        return 2
    names = [n for n in SERVICES if (PROJECT_ROOT / SERVICES[n][0] / "__main__.py").exists()]
    print(f"devstack: starting {', '.join(names)} (Ctrl-C stops everything)", flush=True)
    return await run_services(env, names)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
