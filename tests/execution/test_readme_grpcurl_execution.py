"""The README's execution grpcurl block, run as written by bash with the real grpcurl.

Only the ports (the vault's, the execution service's and the emulator's defaults) and the
certificate folder are substituted; the commands run in order, as a user would paste them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def readme_block(block: str) -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(
        rf"<!-- {block}:begin -->\s*```sh\n(.*?)```\s*<!-- {block}:end -->", text, re.S
    )
    assert match, f"README has no {block} block"
    return match.group(1)


def json_documents(output: str) -> list[dict]:
    """grpcurl prints one pretty JSON document per response."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(output):
        if output[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(output, i)
        docs.append(doc)
    return docs


async def test_execution_readme_commands(
    pair_vault: RunningKeyVault, execution: RunningExecution, emulator: RunningEmulator, pki: Path
) -> None:
    script = (
        readme_block("grpcurl-execution")
        .replace("localhost:50051", f"localhost:{pair_vault.port}")
        .replace("localhost:50052", f"localhost:{execution.port}")
        .replace("127.0.0.1:8089", f"127.0.0.1:{emulator.port}")
        .replace("certs/", f"{pki}/")
    )
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    docs = json_documents(out.decode())

    stored, verdict, *stream = docs[:5]
    assert stored["api_key"]["key_hint"] == "sk-...6789"
    assert verdict["valid"] is True
    assert "started" in stream[0] and "delta" in stream[1]
    executes = [d for d in docs if set(d) & {"started", "delta", "completed"}]
    completed = executes[-1]["completed"]
    assert completed["state"] == "EXECUTION_STATE_SUCCEEDED"
    assert completed["request_id"] == "readme-1"
    listed, got, stats = docs[len(executes) + 2], docs[-2], docs[-1]
    assert listed["executions"][0]["name"] == completed["name"]
    assert got["execution"]["name"] == completed["name"]
    assert int(stats["stats"]["total_count"]) >= 1
