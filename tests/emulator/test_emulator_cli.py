"""`python -m provider_emulator` serves until SIGTERM and announces its URL."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx
from emulator_helpers import openai_body, openai_headers

PROJECT_ROOT = Path(__file__).resolve().parents[2]


async def test_module_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provider_emulator",
        "--port",
        "0",
        "--chunks",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=PROJECT_ROOT,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert match, line
        async with httpx.AsyncClient() as http:
            response = await http.post(
                match.group(1) + "/v1/chat/completions",
                json=openai_body(),
                headers=openai_headers(),
            )
        assert response.json()["choices"][0]["message"]["content"] == "word0 word1 word2"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
        assert process.returncode == 0, stderr.decode()
        assert b"Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
