"""Running the emulator on a real TCP port inside the current event loop."""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

from aiohttp import web

from .app import STATE_KEY, create_app
from .config import EmulatorConfig
from .state import EmulatorState


class RunningEmulator:
    """A started emulator: `base_url`, `port`, `state` (scripts, keys, request log)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self._stopped = False
        self.host = host
        self.port = port
        self.app = runner.app
        self.state: EmulatorState = runner.app[STATE_KEY]
        self.config: EmulatorConfig = self.state.config

    @property
    def base_url(self) -> str:
        """E.g. "http://127.0.0.1:41234" (OpenAI clients want base_url + "/v1")."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop listening and close connections (in-flight answers get
        `config.shutdown_timeout_s` to finish). Safe to call more than once."""
        if not self._stopped:
            self._stopped = True
            await self._runner.cleanup()

    async def __aenter__(self) -> RunningEmulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _start(host: str, port: int, config: EmulatorConfig) -> RunningEmulator:
    quiet: dict[str, Any] = {} if config.access_log else {"access_log": None}
    runner = web.AppRunner(
        create_app(config),
        handler_cancellation=True,
        shutdown_timeout=config.shutdown_timeout_s,
        **quiet,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound_port = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    return RunningEmulator(runner, host, bound_port)


class _Starter:
    """Both awaitable (`emu = await start_emulator()`) and an async context manager
    (`async with start_emulator() as emu:`), which stops the emulator on exit."""

    def __init__(self, host: str, port: int, config: EmulatorConfig) -> None:
        self._args = (host, port, config)
        self._running: RunningEmulator | None = None

    def __await__(self) -> Generator[Any, None, RunningEmulator]:
        return _start(*self._args).__await__()

    async def __aenter__(self) -> RunningEmulator:
        self._running = await _start(*self._args)
        return self._running

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._running is not None:
            await self._running.stop()


def start_emulator(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    config: EmulatorConfig | None = None,
    **settings: Any,
) -> _Starter:
    """Start an emulator on `host:port` (0: a free port) in the running event loop.

    `settings` are EmulatorConfig fields (chunks, text, chunk_delay_ms,
    first_token_delay_ms, accepted_keys, ...), or pass a whole `config`.
    """
    if config is None:
        config = EmulatorConfig(**settings)
    elif settings:
        raise TypeError("pass either config or individual settings, not both")
    return _Starter(host, port, config)
