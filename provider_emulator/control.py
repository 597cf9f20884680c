"""The control plane under `/_emulator/` (JSON in, JSON out), for tests that reach the
emulator through another service and so cannot add headers to the provider requests.

  GET    /_emulator/health         {"status": "ok"}
  POST   /_emulator/script         {"key"?: str, "steps": [step, ...]} -> {"queued", "pending"}
  GET    /_emulator/script         ?key=... -> {"pending": n}
  DELETE /_emulator/script         drop every queued step
  POST   /_emulator/keys/revoke    {"key": str}
  POST   /_emulator/keys/restore   {"key": str}
  POST   /_emulator/cache          {"key"?: str, "cache_read_tokens": n, "cache_write_tokens": n}
  GET    /_emulator/requests       ?key=...&path=...&limit=n -> [recorded request, ...]
  DELETE /_emulator/requests       forget recorded requests
  POST   /_emulator/reset          forget requests, scripts, revocations and cache figures
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .state import EmulatorState, StepError


def _ok(data: Any = None) -> web.Response:
    return web.json_response({"ok": True} if data is None else data)


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError as exc:
        raise _bad(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _bad("body must be a JSON object")
    return data


def _key(data: dict[str, Any], *, required: bool) -> str | None:
    key = data.get("key")
    if key is None and not required:
        return None
    if not isinstance(key, str) or not key:
        raise _bad("key must be a non-empty string")
    return key


def _count(data: dict[str, Any], name: str) -> int:
    value = data.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"{name} must be a non-negative integer")
    return value


def routes(state: EmulatorState) -> list[web.RouteDef]:
    """The control-plane routes acting on `state`."""

    async def health(request: web.Request) -> web.Response:
        return _ok({"status": "ok"})

    async def add_script(request: web.Request) -> web.Response:
        data = await _json_object(request)
        key = _key(data, required=False)
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise _bad("steps must be a list")
        try:
            queued = state.script(steps, key=key)
        except StepError as exc:
            raise _bad(str(exc)) from exc
        return _ok({"queued": queued, "pending": state.pending_steps(key)})

    async def pending(request: web.Request) -> web.Response:
        return _ok({"pending": state.pending_steps(request.query.get("key") or None)})

    async def clear_scripts(request: web.Request) -> web.Response:
        state.clear_scripts()
        return _ok()

    async def revoke(request: web.Request) -> web.Response:
        key = _key(await _json_object(request), required=True)
        assert key is not None
        state.revoke(key)
        return _ok()

    async def restore(request: web.Request) -> web.Response:
        key = _key(await _json_object(request), required=True)
        assert key is not None
        state.restore(key)
        return _ok()

    async def cache(request: web.Request) -> web.Response:
        data = await _json_object(request)
        state.set_cache_tokens(
            read=_count(data, "cache_read_tokens"),
            write=_count(data, "cache_write_tokens"),
            key=_key(data, required=False),
        )
        return _ok()

    async def list_requests(request: web.Request) -> web.Response:
        query = request.query
        found = state.find_requests(key=query.get("key") or None, path=query.get("path"))
        if "limit" in query:
            try:
                limit = int(query["limit"])
            except ValueError as exc:
                raise _bad("limit must be an integer") from exc
            found = found[-limit:] if limit > 0 else []
        return web.json_response([r.to_json() for r in found])

    async def clear_requests(request: web.Request) -> web.Response:
        state.clear_requests()
        return _ok()

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return _ok()

    return [
        web.get("/_emulator/health", health),
        web.post("/_emulator/script", add_script),
        web.get("/_emulator/script", pending),
        web.delete("/_emulator/script", clear_scripts),
        web.post("/_emulator/keys/revoke", revoke),
        web.post("/_emulator/keys/restore", restore),
        web.post("/_emulator/cache", cache),
        web.get("/_emulator/requests", list_requests),
        web.delete("/_emulator/requests", clear_requests),
        web.post("/_emulator/reset", reset),
    ]
