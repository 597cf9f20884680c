"""A local HTTP server speaking the OpenAI chat completions and Anthropic messages wire
formats, with scriptable faults, for tests, the demo and the benchmarks.

In-process::

    async with start_emulator(chunks=5) as emu:        # or: emu = await start_emulator()
        emu.state.script({"status": 429, "headers": {"retry-after": "1"}}, key="sk-a")
        ...  # point clients at emu.base_url (OpenAI: emu.base_url + "/v1")
        emu.state.requests                               # the request log

As a process: ``python -m provider_emulator --host 127.0.0.1 --port 8089``.
The token counting rule is documented in `provider_emulator.textgen`, the control plane
in `provider_emulator.control`, step fields in `Step`.
"""

from .app import STATE_KEY, create_app
from .config import EmulatorConfig
from .server import RunningEmulator, start_emulator
from .state import EmulatorState, RecordedRequest, Step, StepError, key_fingerprint
from .textgen import count_input_tokens, default_text, pieces

__all__ = [
    "STATE_KEY",
    "EmulatorConfig",
    "EmulatorState",
    "RecordedRequest",
    "RunningEmulator",
    "Step",
    "StepError",
    "count_input_tokens",
    "create_app",
    "default_text",
    "key_fingerprint",
    "pieces",
    "start_emulator",
]
