"""The provider HTTP client is shared by every workspace's calls: a cookie that one answer
sets must never travel with a later request."""

from __future__ import annotations

from aiohttp import web

from execution_service.http_transport import provider_http_client
from service_kit.egress import EgressPolicy


async def test_a_cookie_set_by_one_answer_is_not_sent_with_the_next_request() -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"data": []})
        response.set_cookie("session", "workspace-a-secret", path="/")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = provider_http_client(
        connect_timeout=5, read_timeout=5, egress=EgressPolicy.parse("127.0.0.1")
    )
    try:
        for _ in range(2):
            answer = await client.get(f"http://127.0.0.1:{port}/v1/models")
            assert answer.status_code == 200
            assert "workspace-a-secret" in answer.headers["set-cookie"]  # it was offered
    finally:
        await client.aclose()
        await runner.cleanup()
    assert seen == [None, None]
    assert not client.cookies
