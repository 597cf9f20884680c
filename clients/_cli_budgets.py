"""`agentctl budgets create|get|list|update|delete`: budgets from a shell.

Creating, changing and deleting a budget takes the admin certificate (the defaults pick it);
`get` and `list` work with the app certificate too. Amounts are USD (exact decimals).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from . import _cli_output as show
from ._budgets import budget_name
from ._execution import ExecutionClientSync
from .gen.execution.v1 import resources_pb2 as ex_res

Connect = Callable[[argparse.Namespace], ExecutionClientSync]
Print = Callable[[str], None]
# Fields `--clear` may unset (no spend limit, no rate limit, whole workspace).
CLEARABLE = ("limit", "requests-per-minute", "tokens-per-minute", "agent", "labels")
_CLEAR_FIELDS = {
    "limit": "limit_nanos",
    "requests-per-minute": "requests_per_minute",
    "tokens-per-minute": "tokens_per_minute",
    "agent": "agent_id",
    "labels": "labels",
}


def usd(value: str) -> Decimal:
    try:
        amount = Decimal(value.removeprefix("$"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{value!r} is not an amount in USD, e.g. 5") from None
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a non-negative amount")
    return amount


def budget_fields(b: ex_res.Budget) -> str:
    p = b.current_period
    limit = show.dollars(b.limit_nanos) if b.HasField("limit_nanos") else "none"
    remaining = show.dollars(p.remaining_nanos) if p.HasField("remaining_nanos") else "-"
    rpm = str(b.requests_per_minute) if b.HasField("requests_per_minute") else "none"
    tpm = str(b.tokens_per_minute) if b.HasField("tokens_per_minute") else "none"
    return show.fields(
        [
            ("name", b.name),
            ("display name", b.display_name or "-"),
            ("scope", f"agent {b.agent_id}" if b.agent_id else "whole workspace"),
            ("mode", ex_res.BudgetMode.Name(b.mode).removeprefix("BUDGET_MODE_")),
            ("limit", f"{limit} per {_period(b)}"),
            ("unpriced models", "allowed" if b.allow_unpriced_models else "refused"),
            ("requests/minute", rpm),
            ("tokens/minute", tpm),
            ("period", f"{show.time(p, 'start_time')} to {show.time(p, 'end_time')}"),
            ("spent", show.dollars(p.spent_nanos)),
            ("reserved", show.dollars(p.reserved_nanos)),
            ("remaining", remaining),
            ("etag", b.etag),
        ]
    )


def _period(b: ex_res.Budget) -> str:
    return ex_res.BudgetPeriod.Name(b.period).removeprefix("BUDGET_PERIOD_").lower()


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "limit_usd": args.limit,
        "period": args.period,
        "mode": args.mode.replace("-", "_") if args.mode else None,
        "agent_id": args.agent,
        "allow_unpriced_models": args.allow_unpriced_models,
        "requests_per_minute": args.requests_per_minute,
        "tokens_per_minute": args.tokens_per_minute,
        "display_name": args.display_name,
        "labels": dict(args.label) if args.label is not None else None,
    }


def _show(args: argparse.Namespace, out: Print, budget: ex_res.Budget) -> None:
    out(show.dumps(show.as_json(budget)) if args.json else budget_fields(budget))


def create(args: argparse.Namespace, connect: Connect, out: Print) -> int:
    with connect(args) as client:
        budget = client.create_budget(args.workspace, args.budget, **_changes(args))
    _show(args, out, budget)
    return 0


def get(args: argparse.Namespace, connect: Connect, out: Print) -> int:
    with connect(args) as client:
        budget = client.get_budget(args.workspace, args.budget)
    _show(args, out, budget)
    return 0


def list_(args: argparse.Namespace, connect: Connect, out: Print) -> int:
    with connect(args) as client:
        budgets = list(client.iter_budgets(args.workspace, limit=args.limit))
    if args.json:
        out(show.dumps({"budgets": [show.as_json(b) for b in budgets]}))
    elif not budgets:
        out(f"no budgets in workspaces/{args.workspace}")
    else:
        rows = [
            [
                b.name.rsplit("/", 1)[1],
                b.agent_id or "*",
                ex_res.BudgetMode.Name(b.mode).removeprefix("BUDGET_MODE_"),
                (show.dollars(b.limit_nanos) + "/" + _period(b))
                if b.HasField("limit_nanos")
                else "-",
                show.dollars(b.current_period.spent_nanos),
                show.dollars(b.current_period.remaining_nanos)
                if b.current_period.HasField("remaining_nanos")
                else "-",
            ]
            for b in budgets
        ]
        out(show.table(["BUDGET", "AGENT", "MODE", "LIMIT", "SPENT", "REMAINING"], rows))
    return 0


def update(args: argparse.Namespace, connect: Connect, out: Print) -> int:
    changes = {k: v for k, v in _changes(args).items() if v is not None}
    clear = [_CLEAR_FIELDS[c] for c in args.clear or []]
    if not changes and not clear:
        raise argparse.ArgumentTypeError("nothing to update: give fields to change (or --clear)")
    with connect(args) as client:
        budget = client.update_budget(
            args.workspace, args.budget, etag=args.etag or "", clear=clear, **changes
        )
    _show(args, out, budget)
    return 0


def delete(args: argparse.Namespace, connect: Connect, out: Print) -> int:
    with connect(args) as client:
        client.delete_budget(args.workspace, args.budget, etag=args.etag or "")
    name = budget_name(args.workspace, args.budget)
    out(show.dumps({"name": name, "deleted": True}) if args.json else f"deleted {name}")
    return 0


def add_flags(sub: argparse.ArgumentParser, *, create: bool, positive: Any, label: Any) -> None:
    """The budget's fields as flags (create: every one optional, as the defaults say)."""
    sub.add_argument("--limit", type=usd, metavar="USD", help="spend limit per period, e.g. 25")
    sub.add_argument(
        "--period",
        choices=["day", "month"],
        help="UTC day or calendar month (default day)" if create else "UTC day or calendar month",
    )
    sub.add_argument(
        "--mode",
        choices=["enforce", "alert-only"],
        help="refuse what does not fit, or only count it"
        + (" (default enforce)" if create else ""),
    )
    sub.add_argument("--agent", metavar="AGENT", help="only this agent's executions")
    sub.add_argument(
        "--allow-unpriced-models",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="admit models without a known price instead of refusing them (PRICE_UNKNOWN)",
    )
    sub.add_argument("--requests-per-minute", type=positive, metavar="N")
    sub.add_argument("--tokens-per-minute", type=positive, metavar="N")
    sub.add_argument("--display-name", metavar="TEXT")
    sub.add_argument("--label", action="append", type=label, metavar="KEY=VALUE")
