"""The aiohttp application: provider endpoints and the control plane.

Run it with handler cancellation on (`start_emulator` and `python -m provider_emulator`
do), so that a client leaving while its answer is delayed is recorded at once rather than
at the next write."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

from aiohttp import web

from . import control
from .anthropic_wire import WIRE as ANTHROPIC
from .config import DEFAULT_CHUNKS, EmulatorConfig
from .framing import reframe, reframe_events
from .openai_wire import WIRE as OPENAI
from .responder import (
    Ending,
    abort_connection,
    send_body,
    send_cut_body,
    send_error,
    send_stream,
    sleep_ms,
)
from .state import NO_STEP, EmulatorState, Outcome, RecordedRequest, Step
from .textgen import pieces
from .wire import Answer, ErrorReply, GenRequest, WireFormat, new_id

STATE_KEY = web.AppKey("provider_emulator_state", EmulatorState)
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
_INVALID_JSON = object()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else _INVALID_JSON
    except ValueError:
        return _INVALID_JSON


class ProviderEndpoints:
    """`POST /v1/chat/completions`, `POST /v1/messages` and `GET /v1/models`."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.config = state.config

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, OPENAI)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, ANTHROPIC)

    async def models(self, request: web.Request) -> web.StreamResponse:
        anthropic = "x-api-key" in request.headers or "anthropic-version" in request.headers
        wire: WireFormat = ANTHROPIC if anthropic else OPENAI
        key = wire.api_key(request.headers)
        record = self._record(request, wire, key, None)
        try:
            problem = self._check_access(request, wire, key, record)
            if problem is not None:
                return await send_error(request, record, problem, self._headers(wire, record))
            step = self._take_step(key, request, record)
            headers = {**self._headers(wire, record), **step.headers}
            early = await self._step_prelude(request, wire, step, record, headers)
            if early is not None:
                return early
            return await send_body(
                request,
                record,
                200,
                wire.models_body,
                wire.json_content_type,
                headers,
                "completed",
            )
        except asyncio.CancelledError:
            record.mark_disconnected()
            raise

    # -- shared steps ----------------------------------------------------------------------

    def _record(
        self, request: web.Request, wire: WireFormat, key: str | None, body: Any
    ) -> RecordedRequest:
        if body is _INVALID_JSON:
            body = None
        return self.state.record(
            wire.name,
            request.method,
            request.path,
            request.headers,
            key,
            body,
            new_id(wire.request_id_prefix),
        )

    def _headers(self, wire: WireFormat, record: RecordedRequest) -> dict[str, str]:
        return {wire.request_id_header: record.request_id}

    def _check_access(
        self, request: web.Request, wire: WireFormat, key: str | None, record: RecordedRequest
    ) -> ErrorReply | None:
        if not self.state.key_accepted(key):
            return wire.auth_error(key, record.request_id)
        return wire.check_headers(request.headers, record.request_id)

    def _take_step(self, key: str | None, request: web.Request, record: RecordedRequest) -> Step:
        step = self.state.take_step(key, request.path)
        if step is None:
            return NO_STEP
        record.step = step  # as scripted: the request log never holds the key
        return step.echoing(key)

    async def _step_prelude(
        self,
        request: web.Request,
        wire: WireFormat,
        step: Step,
        record: RecordedRequest,
        headers: dict[str, str],
    ) -> web.StreamResponse | None:
        """Handle a scripted reset or error status; None when the answer goes ahead."""
        if not step.reset and (step.status is None or step.status == 200):
            return None
        await sleep_ms(self._first_delay(step))
        if step.reset:
            record.finish(None, "reset")
            abort_connection(request)
            return web.Response()
        assert step.status is not None
        if step.error_body is not None:
            reply = ErrorReply(step.status, step.error_body.encode(), "text/plain; charset=utf-8")
        else:
            reply = wire.error(
                step.status, record.request_id, step.error_type, step.error_code, step.error_message
            )
        return await send_error(request, record, reply, headers)

    def _first_delay(self, step: Step) -> float:
        if step.delay_before_first_ms is not None:
            return step.delay_before_first_ms
        return self.config.first_token_delay_ms

    # -- generation ------------------------------------------------------------------------

    async def _generate(self, request: web.Request, wire: WireFormat) -> web.StreamResponse:
        raw = await request.read()
        key = wire.api_key(request.headers)
        body = _decode(raw)
        record = self._record(request, wire, key, body)
        try:
            return await self._answer(request, wire, key, body, record)
        except asyncio.CancelledError:
            record.mark_disconnected()
            raise

    async def _answer(
        self,
        request: web.Request,
        wire: WireFormat,
        key: str | None,
        body: Any,
        record: RecordedRequest,
    ) -> web.StreamResponse:
        headers = self._headers(wire, record)
        parsed = self._validate(request, wire, key, body, record)
        if isinstance(parsed, ErrorReply):
            return await send_error(request, record, parsed, headers)
        step = self._take_step(key, request, record)
        headers.update(step.headers)
        early = await self._step_prelude(request, wire, step, record, headers)
        if early is not None:
            return early
        answer = self._make_answer(wire, key, parsed, step, record)
        if parsed.stream:
            events = wire.stream_events(answer)
            ending = self._ending(wire, step, answer.count, events.tail)
            if step.line_ending is not None:
                events = reframe_events(events, step.line_ending)
                ending = dataclasses.replace(ending, data=reframe(ending.data, step.line_ending))
            return await send_stream(
                request,
                record,
                events,
                ending,
                wire.stream_content_type,
                headers,
                self._first_delay(step),
                self.config.chunk_delay_ms if step.chunk_delay_ms is None else step.chunk_delay_ms,
                split_writes_ms=step.split_writes_ms,
                write_per_event=self.config.write_per_event,
            )
        return await self._send_whole(request, wire, step, answer, record, headers)

    def _make_answer(
        self,
        wire: WireFormat,
        key: str | None,
        request: GenRequest,
        step: Step,
        record: RecordedRequest,
    ) -> Answer:
        text, chunks = self._answer_text(request, step)
        answer_pieces = pieces(text, chunks)
        count = len(answer_pieces)
        if request.max_tokens is not None:
            count = min(count, request.max_tokens)
        cache_read, cache_write = self.state.cache_tokens(key)
        if step.cache_read_tokens is not None:
            cache_read = step.cache_read_tokens
        if step.cache_write_tokens is not None:
            cache_write = step.cache_write_tokens
        record.usage = {
            "input_tokens": request.input_tokens,
            "output_tokens": count,
            "cache_read_tokens": cache_read,
            "cache_write_tokens": cache_write,
        }
        return Answer(
            request_id=record.request_id,
            message_id=new_id(wire.message_id_prefix),
            created=int(time.time()),
            model=request.model,
            pieces=answer_pieces,
            count=count,
            truncated=count < len(answer_pieces),
            input_tokens=request.input_tokens,
            cache_read=cache_read,
            cache_write=cache_write,
            include_usage=request.include_usage,
            output=request.output,
            refusal=step.output_fault == "refusal",
        )

    def _answer_text(self, request: GenRequest, step: Step) -> tuple[str | None, int | None]:
        """The answer text and its chunk count: a refusal, the JSON of a structured answer
        (in `chunks` slices cut anywhere, escape sequences included), or plain text."""
        if step.output_fault == "refusal":
            return step.text or REFUSAL_TEXT, step.chunks
        if request.output is not None:
            chunks = step.chunks if step.chunks is not None else self.config.chunks
            chunks = DEFAULT_CHUNKS if chunks is None else chunks
            if step.text is not None:
                return step.text, chunks
            if step.output_fault == "schema_violation":
                return request.output.violation(), chunks
            if step.output_fault == "invalid_json":
                return invalid_json(request.output.document), chunks
            return request.output.document, chunks
        if step.text is not None:
            return step.text, step.chunks
        if step.chunks is not None:
            return self.config.text, step.chunks
        return self.config.text, self.config.chunks

    def _validate(
        self,
        request: web.Request,
        wire: WireFormat,
        key: str | None,
        body: Any,
        record: RecordedRequest,
    ) -> GenRequest | ErrorReply:
        problem = self._check_access(request, wire, key, record)
        if problem is not None:
            return problem
        if body is _INVALID_JSON:
            return wire.invalid_json(record.request_id)
        return wire.parse(body, record.request_id)

    def _ending(self, wire: WireFormat, step: Step, count: int, tail: bytes) -> Ending:
        if step.cut_after_chunks is not None:
            return Ending(min(step.cut_after_chunks, count), b"", "cut", abort=True)
        if step.malformed_after_chunks is not None:
            return Ending(
                min(step.malformed_after_chunks, count), wire.malformed_event, "malformed"
            )
        if step.error_after_chunks is not None:
            event = wire.stream_error_event(step.error_type, step.error_message)
            return Ending(min(step.error_after_chunks, count), event, "stream_error")
        return Ending(count, tail, "completed")

    async def _send_whole(
        self,
        request: web.Request,
        wire: WireFormat,
        step: Step,
        answer: Answer,
        record: RecordedRequest,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        await sleep_ms(self._first_delay(step))
        body = wire.completion_body(answer)
        if step.cut_after_chunks is not None:
            return await send_cut_body(request, record, body, wire.json_content_type, headers)
        if step.error_after_chunks is not None:
            status = wire.midstream_error_status(step.error_type)
            reply = wire.error(status, record.request_id, step.error_type, None, step.error_message)
            return await send_error(request, record, reply, headers)
        outcome: Outcome = "completed"
        if step.malformed_after_chunks is not None:
            body, outcome = body[: len(body) // 2], "malformed"
        record.chunks_sent = answer.count
        return await send_body(request, record, 200, body, wire.json_content_type, headers, outcome)


def invalid_json(document: str) -> str:
    """The document made invalid (a trailing comma; or trailing text for a scalar)."""
    if document[-1:] in ("}", "]") and len(document) > 2:
        return document[:-1] + "," + document[-1]
    return document + ","


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    """The emulator as an aiohttp application; its state is `app[STATE_KEY]`."""
    config = config or EmulatorConfig()
    state = EmulatorState(config)
    app = web.Application(client_max_size=config.client_max_size)
    app[STATE_KEY] = state
    endpoints = ProviderEndpoints(state)
    app.router.add_post("/v1/chat/completions", endpoints.chat_completions)
    app.router.add_post("/v1/messages", endpoints.messages)
    app.router.add_get("/v1/models", endpoints.models)
    app.router.add_routes(control.routes(state))
    return app
