"""Finish: judge a completed stream's output against the output schema it was asked to follow.

Pure: the joined output text, any refusal and the finish reason in; the verdict out. A
refusal, text that is not JSON (a cut at the token limit included) or JSON that breaks the
schema fail the execution; the raw text is recorded either way, by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from execution_service.model import OUTPUT_REFUSED, OUTPUT_SCHEMA_VIOLATION, ExecutionError
from execution_service.schemas import JsonSchema, SchemaViolation, compiled, parse_json

OUTPUT = "output"  # the pointer prefix of the output document
MAX_REFUSAL_CHARS = 1000  # the model's refusal becomes the error message: keep it bounded
MESSAGE_VIOLATIONS = 3  # violations named in the error message (all are in `violations`)
_CUT_REASONS = frozenset({"length", "max_tokens"})


@dataclass(frozen=True)
class OutputVerdict:
    error: ExecutionError | None  # None: the output is what was asked for
    output: Any = None  # the parsed JSON, when the text was JSON
    output_valid: bool | None = None  # None: no output schema applied


def refused(refusal: str, schema: JsonSchema | None) -> OutputVerdict:
    text = " ".join(refusal.split())
    if len(text) > MAX_REFUSAL_CHARS:
        text = text[: MAX_REFUSAL_CHARS - 3] + "..."
    message = f"the model refused to answer: {text}" if text else "the model refused to answer"
    return OutputVerdict(
        ExecutionError(OUTPUT_REFUSED, message), output_valid=False if schema else None
    )


def schema_failure(violations: list[SchemaViolation], what: str) -> ExecutionError:
    named = "; ".join(f"{v.pointer}: {v.description}" for v in violations[:MESSAGE_VIOLATIONS])
    more = len(violations) - MESSAGE_VIOLATIONS
    if more > 0:
        named += f" (and {more} more)"
    return ExecutionError(OUTPUT_SCHEMA_VIOLATION, f"{what}: {named}", violations=tuple(violations))


def check_output(
    schema: JsonSchema | None, text: str, *, refusal: str | None, finish_reason: str
) -> OutputVerdict:
    """The verdict on a stream that completed. `refusal` is the joined refusal text, None
    when the model did not refuse."""
    if refusal is not None:
        return refused(refusal, schema)
    if schema is None:
        return OutputVerdict(None)
    try:
        document = parse_json(text)
    except (ValueError, RecursionError) as exc:
        why = f"is not valid JSON ({exc})"
        if finish_reason in _CUT_REASONS:
            why = f"was cut at the token limit (finish reason {finish_reason}) and {why}"
        violation = SchemaViolation(OUTPUT, why)
        return OutputVerdict(
            schema_failure([violation], "the output is not JSON"), output_valid=False
        )
    violations = compiled(schema).validate(document, OUTPUT)
    if violations:
        return OutputVerdict(
            schema_failure(violations, "the output breaks its schema"),
            output=document,
            output_valid=False,
        )
    return OutputVerdict(None, output=document, output_valid=True)
