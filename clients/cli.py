"""`python -m clients` / `agentctl`: the key vault and execution services from a shell.

Human-readable output by default, `--json` for scripts (one JSON document; `execute` prints
JSON lines, one per event). Failures print one line, `error: CODE (REASON): message`, on
standard error. Exit codes: 0 success, 1 a call failed (or `keys test` found the key
invalid, or an execution did not succeed), 2 bad usage or unreadable certificates, 130
interrupted. An API key is never taken from the command line (where `ps` and shell history
would show it): `keys set` reads it from an environment variable or standard input.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import _cli_budgets as cli_budgets
from . import _cli_output as show
from ._channel import DEFAULT_TIMEOUT
from ._errors import ClientError
from ._execution import DEFAULT_EXECUTION_ADDRESS, ExecutionClientSync
from ._keyvault import DEFAULT_KEYVAULT_ADDRESS, KeyVaultClientSync
from ._types import (
    FALLBACK_TRIGGERS,
    AgentRoute,
    Completed,
    Delta,
    agent_name,
    api_key_name,
    workspace_name,
)
from .gen.execution.v1 import resources_pb2 as ex_res

PROG = "agentctl"
DEFAULT_KEY_ENV = "AGENTS_API_KEY"
PROVIDERS = ("openai", "anthropic")
STATES = ("running", "succeeded", "failed", "cancelled")
_DEFAULT_CERTS = {
    False: ("AGENTS_CERT", "AGENTS_KEY", "certs/app.pem", "certs/app-key.pem"),
    True: ("AGENTS_ADMIN_CERT", "AGENTS_ADMIN_KEY", "certs/admin.pem", "certs/admin-key.pem"),
}
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageProblem(Exception):
    """Bad input the parser could not catch (exit code 2)."""


def _is_value(arg: str) -> bool:
    return arg == "-" or not arg.startswith("-")


class _Parser(argparse.ArgumentParser):
    """Never echoes a stray value back: one may be an API key typed as an argument."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        # `execute WORKSPACE [options] PROMPT`: argparse settles the optional PROMPT together
        # with WORKSPACE, so a prompt after the options comes back as an extra value.
        if getattr(parsed, "prompt", "") is None and extras and _is_value(extras[0]):
            parsed.prompt = extras.pop(0)
        if extras:
            options = [a.split("=", 1)[0] for a in extras if a.startswith("-")]
            hidden = len(extras) - len(options)
            shown = " ".join(options + ([f"<{hidden} value(s) not shown>"] if hidden else []))
            self.error(
                f"unrecognized arguments: {shown} (an API key is never read from the command "
                "line: use --from-env VAR or --stdin)"
            )
        return parsed


def _provider(value: str) -> str:
    if value.lower() not in PROVIDERS:
        # The value is not repeated: it may be a key typed in the provider's place.
        raise argparse.ArgumentTypeError("must be openai or anthropic")
    return value.lower()


def _route(value: str) -> tuple[str, str]:
    provider, _, model = value.partition(":")
    if not model:
        raise argparse.ArgumentTypeError(f"{value!r} is not PROVIDER:MODEL, e.g. openai:gpt-4o")
    return _provider(provider), model


def _routes(args: argparse.Namespace) -> list[AgentRoute] | None:
    """The --route flags as routes (--max-tokens and --temperature apply to each); None
    when none is given. They replace --provider and --model."""
    if not args.route:
        return None
    if args.provider is not None or args.model is not None:
        raise UsageProblem("give --route (repeatable) or --provider and --model, not both")
    return [
        AgentRoute(provider, model, max_tokens=args.max_tokens, temperature=args.temperature)
        for provider, model in args.route
    ]


def _since(value: str) -> dt.timedelta:
    match = _SINCE.match(value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 30m, 24h or 7d")
    return dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE")
    return key, val


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


# --- connections ------------------------------------------------------------------------------


def _tls(args: argparse.Namespace) -> tuple[str, str, str]:
    """(ca, cert, key): the flag, else the environment, else the development default."""
    cert_env, key_env, cert_default, key_default = _DEFAULT_CERTS[args.admin]
    return (
        args.ca or os.environ.get("AGENTS_CA") or "certs/ca.pem",
        args.cert or os.environ.get(cert_env) or cert_default,
        args.key or os.environ.get(key_env) or key_default,
    )


def _vault(args: argparse.Namespace) -> KeyVaultClientSync:
    ca, cert, key = _tls(args)
    timeout = args.timeout or DEFAULT_TIMEOUT
    return KeyVaultClientSync.connect(args.vault, ca=ca, cert=cert, key=key, timeout=timeout)


def _execution(args: argparse.Namespace) -> ExecutionClientSync:
    ca, cert, key = _tls(args)
    timeout = args.timeout or DEFAULT_TIMEOUT
    return ExecutionClientSync.connect(args.execution, ca=ca, cert=cert, key=key, timeout=timeout)


def _out(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def _json(document: Any) -> None:
    _out(show.dumps(document))


# --- keys -------------------------------------------------------------------------------------


def _read_key(args: argparse.Namespace) -> str:
    if args.stdin:
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.read()
        key = key.rstrip("\r\n")
        if not key:
            raise UsageProblem("no API key on standard input")
        return key
    key = os.environ.get(args.from_env, "")
    if not key:
        raise UsageProblem(
            f"no API key in ${args.from_env}: set it, or pass --stdin "
            "(a key is never taken from the command line)"
        )
    return key


def cmd_keys_set(args: argparse.Namespace) -> int:
    key = _read_key(args)
    with _vault(args) as vault:
        reply = vault.set_api_key(args.workspace, args.provider, key, base_url=args.base_url)
    if args.json:
        _json(show.as_json(reply))
    else:
        verb = "created" if reply.created else "replaced"
        _out(f"{verb} {reply.api_key.name}: {reply.api_key.key_hint}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        keys = list(vault.iter_api_keys(args.workspace))
    if args.json:
        _json({"api_keys": [show.as_json(k) for k in keys]})
    elif keys:
        _out(show.api_key_rows(keys))
    else:
        _out(f"no API keys in {workspace_name(args.workspace)}")
        if _nothing_in_workspace(args):
            print(
                f"note: workspace {args.workspace} has no keys, no executions and no agents "
                "(workspace names are case-sensitive, and nothing registers them: check the "
                "spelling)",
                file=sys.stderr,
                flush=True,
            )
    return 0


# `keys list` asks the execution service only to tell an empty workspace from a mistyped one;
# it does not wait long for that.
_WORKSPACE_HINT_TIMEOUT = 3.0


def _nothing_in_workspace(args: argparse.Namespace) -> bool:
    """True when the execution service answers that the workspace has no executions and no
    agents; False when it has some, or could not be asked (then only the keys are known)."""
    timeout = min(args.timeout or DEFAULT_TIMEOUT, _WORKSPACE_HINT_TIMEOUT)
    try:
        with _execution(args) as execution:
            executions = execution.list_executions(args.workspace, page_size=1, timeout=timeout)
            agents = execution.list_agents(args.workspace, page_size=1, timeout=timeout)
    except ClientError:
        return False
    return not executions.items and not agents.items


def cmd_keys_get(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        key = vault.get_api_key(args.workspace, args.provider)
    if args.json:
        _json(show.as_json(key))
    else:
        _out(show.api_key_fields(key))
    return 0


def cmd_keys_delete(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        vault.delete_api_key(args.workspace, args.provider)
    name = api_key_name(args.workspace, args.provider)
    if args.json:
        _json({"name": name, "deleted": True})
    else:
        _out(f"deleted {name}")
    return 0


def cmd_keys_test(args: argparse.Namespace) -> int:
    candidate = ""
    if args.candidate_from_env:
        candidate = os.environ.get(args.candidate_from_env, "")
        if not candidate:
            raise UsageProblem(f"no candidate key in ${args.candidate_from_env}")
    with _execution(args) as client:
        reply = client.test_api_key(
            args.workspace, args.provider, candidate_api_key=candidate, base_url=args.base_url
        )
    if args.json:
        _json(show.as_json(reply))
    else:
        what = "candidate key" if candidate else api_key_name(args.workspace, args.provider)
        took = show.duration(reply.latency)
        verdict = "valid" if reply.valid else f"invalid: {reply.reason}: {reply.message}"
        _out(f"{what}: {verdict} ({took})")
    return 0 if reply.valid else 1


# --- executions -------------------------------------------------------------------------------


def _execute_form(args: argparse.Namespace) -> dict[str, Any]:
    """Ad hoc (--provider, --model and a PROMPT) or an agent by name (--input)."""
    if args.input is not None:
        extra = [
            flag
            for flag, value in (
                ("--provider", args.provider),
                ("--model", args.model),
                ("--route", args.route),
                ("--system", args.system),
                ("--max-tokens", args.max_tokens),
                ("--temperature", args.temperature),
                ("--output-schema", args.output_schema),
                ("PROMPT", args.prompt),
            )
            if value is not None
        ]
        if extra:
            raise UsageProblem(f"with --input the agent defines the run; drop {', '.join(extra)}")
        text = _read_text(args.input[1:], "--input") if args.input.startswith("@") else args.input
        return {"agent": args.agent, "input_json": text}
    routes = _routes(args)
    missing = [
        flag
        for flag, value in (("--provider", args.provider), ("--model", args.model))
        if value is None and routes is None
    ]
    if missing or args.prompt is None:
        missing += [] if args.prompt is not None else ["PROMPT"]
        raise UsageProblem(
            f"missing {', '.join(missing)} (or run the agent with --input JSON|@FILE)"
        )
    return {
        "agent_id": args.agent,
        "prompt": sys.stdin.read() if args.prompt == "-" else args.prompt,
        "system": args.system,
        **(
            {"routes": routes}
            if routes is not None
            else {
                "provider": args.provider,
                "model": args.model,
                "max_tokens": args.max_tokens,
                "temperature": args.temperature,
            }
        ),
        "output_schema": _schema_file(args.output_schema, "--output-schema")
        if args.output_schema
        else None,
    }


def cmd_execute(args: argparse.Namespace) -> int:
    form = _execute_form(args)
    finished: Completed | None = None
    ends_with_newline = True
    with _execution(args) as client:
        events = client.execute(
            args.workspace,
            **form,
            request_id=args.request_id or "",
            labels=dict(args.label or []),
            timeout=args.timeout,
        )
        try:
            for event in events:
                if args.json:
                    _out(show.dumps(show.event_json(event)))
                elif isinstance(event, Delta) and event.text:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                    ends_with_newline = event.text.endswith("\n")
                if isinstance(event, Completed):
                    finished = event
        except ClientError as err:
            if err.reason != "OUTPUT_SCHEMA_VIOLATION" or not err.execution_name:
                raise
            # The error names the first violations; the record has them all.
            if not ends_with_newline:
                _out()
                ends_with_newline = True
            _error(_client_error_line(err))
            record = client.get_execution(err.execution_name)
            for violation in record.error.violations:
                print(f"  {violation.pointer}: {violation.description}", file=sys.stderr)
            return 1
        finally:
            if not ends_with_newline:
                _out()  # end the partial line before anything is printed on stderr
    if finished is None:
        raise ClientError("the stream ended without a completed event")
    if not args.json:
        line = show.summary(finished.execution, replayed=finished.replayed)
        print(line, file=sys.stderr, flush=True)
    return 0 if finished.execution.state == ex_res.EXECUTION_STATE_SUCCEEDED else 1


def cmd_executions_list(args: argparse.Namespace) -> int:
    start = dt.datetime.now(dt.UTC) - args.since if args.since else None
    with _execution(args) as client:
        found = list(
            client.iter_executions(
                args.workspace,
                agent_id=args.agent or "",
                state=args.state,
                start_time=start,
                page_size=min(args.limit, 1000),
                limit=args.limit,
            )
        )
    if args.json:
        _json({"executions": [show.as_json(e) for e in found]})
    elif found:
        _out(show.execution_rows(found))
    else:
        _out(f"no executions in {workspace_name(args.workspace)} match")
    return 0


def cmd_executions_get(args: argparse.Namespace) -> int:
    with _execution(args) as client:
        execution = client.get_execution(args.name)
    if args.json:
        _json(show.as_json(execution))
    else:
        _out(show.execution_fields(execution))
    return 0


def cmd_executions_cancel(args: argparse.Namespace) -> int:
    with _execution(args) as client:
        execution = client.cancel_execution(args.name)
    if args.json:
        _json(show.as_json(execution))
    else:
        _out(show.execution_fields(execution))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    end = dt.datetime.now(dt.UTC)
    start = end - args.since
    with _execution(args) as client:
        stats = client.get_agent_stats(args.workspace, args.agent, start_time=start, end_time=end)
    if args.json:
        _json(show.as_json(stats))
    else:
        window = f"{start:%Y-%m-%d %H:%M:%SZ} .. {end:%Y-%m-%d %H:%M:%SZ}"
        _out(show.stats_fields(stats, window))
    return 0


# --- agents -----------------------------------------------------------------------------------

AGENT_FIELDS = (
    "display_name",
    "description",
    "instructions",
    "input_schema",
    "output_schema",
    "labels",
    "fallback",
)


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as err:
        raise UsageProblem(f"cannot read {what} {path}: {err.strerror or err}") from None


def _schema_file(path: str, flag: str) -> dict[str, Any]:
    text = _read_text(path, f"{flag}")
    try:
        schema = json.loads(text)
    except ValueError as err:
        raise UsageProblem(f"{flag} {path} is not JSON: {err}") from None
    if not isinstance(schema, dict):
        raise UsageProblem(f"{flag} {path} must hold a JSON object (a JSON Schema)")
    return schema


def _agent_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The agent fields and route settings the flags give (None: not given)."""
    instructions = args.instructions
    if instructions is not None and instructions.startswith("@"):
        instructions = _read_text(instructions[1:], "--instructions")
    return {
        "display_name": args.display_name,
        "description": args.description,
        "instructions": instructions,
        "input_schema": _schema_file(args.input_schema, "--input-schema")
        if args.input_schema
        else None,
        "output_schema": _schema_file(args.output_schema, "--output-schema")
        if args.output_schema
        else None,
        "labels": dict(args.label) if args.label is not None else None,
        "fallback_on": None
        if args.fallback_on is None
        else [t for t in args.fallback_on if t != "none"],
        **_route_changes(args),
    }


def _route_changes(args: argparse.Namespace) -> dict[str, Any]:
    routes = _routes(args)
    if routes is not None:
        return {"routes": routes}
    settings = ("provider", "model", "max_tokens", "temperature")
    return {name: getattr(args, name) for name in settings}


def _show_agent(args: argparse.Namespace, agent: Any) -> None:
    if args.json:
        _json(show.as_json(agent.message))
    else:
        _out(show.agent_fields(agent))


def cmd_agents_create(args: argparse.Namespace) -> int:
    changes = {k: v for k, v in _agent_changes(args).items() if v is not None}
    if "routes" not in changes and not {"provider", "model"} <= changes.keys():
        raise UsageProblem("give --provider and --model, or --route PROVIDER:MODEL (repeatable)")
    with _execution(args) as client:
        agent = client.create_agent(args.workspace, args.agent, **changes)
    _show_agent(args, agent)
    return 0


def cmd_agents_get(args: argparse.Namespace) -> int:
    with _execution(args) as client:
        agent = client.get_agent(args.workspace, args.agent)
    _show_agent(args, agent)
    return 0


def cmd_agents_list(args: argparse.Namespace) -> int:
    with _execution(args) as client:
        agents = list(
            client.iter_agents(args.workspace, page_size=min(args.limit, 1000), limit=args.limit)
        )
    if args.json:
        _json({"agents": [show.as_json(a.message) for a in agents]})
    elif agents:
        _out(show.agent_rows(agents))
    else:
        _out(f"no agents in {workspace_name(args.workspace)}")
    return 0


def cmd_agents_update(args: argparse.Namespace) -> int:
    changes = {k: v for k, v in _agent_changes(args).items() if v is not None}
    clear = [name.replace("-", "_") for name in args.clear or []]
    if not changes and not clear:
        raise UsageProblem("nothing to update: give the fields to change (or --clear FIELD)")
    with _execution(args) as client:
        agent = client.update_agent(
            args.workspace, args.agent, etag=args.etag or "", clear=clear, **changes
        )
    _show_agent(args, agent)
    return 0


def cmd_agents_delete(args: argparse.Namespace) -> int:
    with _execution(args) as client:
        client.delete_agent(args.workspace, args.agent, etag=args.etag or "")
    name = agent_name(args.workspace, args.agent)
    if args.json:
        _json({"name": name, "deleted": True})
    else:
        _out(f"deleted {name}")
    return 0


# --- budgets (clients/_cli_budgets.py) -------------------------------------------------------


def _budget_handler(
    run: Callable[[argparse.Namespace, Callable[..., Any], Callable[[str], None]], int],
) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args, _execution, _out)
        except argparse.ArgumentTypeError as err:
            raise UsageProblem(str(err)) from None

    return handler


def _budget_commands(
    commands: Any, leaf: Callable[..., argparse.ArgumentParser], workspace: Any
) -> None:
    budgets = commands.add_parser(
        "budgets", help="spend limits and rate limits (admin certificate to change them)"
    )
    group = budgets.add_subparsers(dest="budgets_command", metavar="COMMAND", required=True)

    def target(sub: argparse.ArgumentParser) -> None:
        workspace(sub)
        sub.add_argument("budget", metavar="BUDGET", help="budget id, e.g. monthly")

    sub = leaf(
        group,
        "create",
        "execution",
        _budget_handler(cli_budgets.create),
        "create a budget",
        admin=True,
    )
    target(sub)
    cli_budgets.add_flags(sub, create=True, positive=_positive, label=_label)
    sub = leaf(
        group,
        "update",
        "execution",
        _budget_handler(cli_budgets.update),
        "change the fields given (only those); --etag makes it conditional",
        admin=True,
    )
    target(sub)
    cli_budgets.add_flags(sub, create=False, positive=_positive, label=_label)
    sub.add_argument(
        "--clear",
        action="append",
        choices=cli_budgets.CLEARABLE,
        metavar="FIELD",
        help="unset (repeatable): " + ", ".join(cli_budgets.CLEARABLE),
    )
    sub.add_argument("--etag", help="only if the budget is still at this version")
    sub = leaf(
        group,
        "get",
        "execution",
        _budget_handler(cli_budgets.get),
        "show a budget: limit, spent, reserved, remaining, period",
    )
    target(sub)
    sub = leaf(group, "list", "execution", _budget_handler(cli_budgets.list_), "list budgets")
    workspace(sub)
    sub.add_argument("--limit", type=_positive, default=100, help="at most N (default 100)")
    sub = leaf(
        group,
        "delete",
        "execution",
        _budget_handler(cli_budgets.delete),
        "delete a budget",
        admin=True,
    )
    target(sub)
    sub.add_argument("--etag", help="only if the budget is still at this version")


# --- admin ------------------------------------------------------------------------------------


def cmd_admin_rewrap(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        reply = vault.rewrap_api_keys(batch_size=args.batch_size)
    if args.json:
        _json(show.as_json(reply))
    else:
        _out(
            f"primary master key v{reply.primary_version}: rewrapped {reply.rewrapped_count} "
            f"key(s), {reply.remaining_count} remaining"
            + (" (writers raced the last batch: run again)" if reply.remaining_count else "")
        )
    return 0


def cmd_admin_audit(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        events = list(
            vault.iter_audit_events(
                args.workspace, page_size=min(args.limit, 1000), limit=args.limit
            )
        )
    if args.json:
        _json({"audit_events": [show.as_json(e) for e in events]})
    elif events:
        _out(show.audit_rows(events))
    else:
        _out("no audit events")
    return 0


# --- the parser -------------------------------------------------------------------------------


def _env_help(env: str, default: str) -> str:
    return f"(env {env}, default {default})"


def _common_parents() -> dict[str, argparse.ArgumentParser]:
    output = _Parser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON for scripts")
    output.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"deadline per call (default {DEFAULT_TIMEOUT:g} s; none for execute)",
    )
    tls = output.add_argument_group("mTLS")
    tls.add_argument("--ca", metavar="PEM", help=_env_help("AGENTS_CA", "certs/ca.pem"))
    tls.add_argument(
        "--cert",
        metavar="PEM",
        help="client certificate "
        + _env_help(
            "AGENTS_CERT", "certs/app.pem; admin commands: AGENTS_ADMIN_CERT, certs/admin.pem"
        ),
    )
    tls.add_argument(
        "--key",
        metavar="PEM",
        help="client private key "
        + _env_help(
            "AGENTS_KEY", "certs/app-key.pem; admin commands: AGENTS_ADMIN_KEY, certs/admin-key.pem"
        ),
    )

    def vault_address(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--vault",
            metavar="HOST:PORT",
            default=os.environ.get("AGENTS_VAULT_ADDRESS") or DEFAULT_KEYVAULT_ADDRESS,
            help="key vault address " + _env_help("AGENTS_VAULT_ADDRESS", DEFAULT_KEYVAULT_ADDRESS),
        )
        return parser

    def execution_address(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--execution",
            metavar="HOST:PORT",
            default=os.environ.get("AGENTS_EXECUTION_ADDRESS") or DEFAULT_EXECUTION_ADDRESS,
            help="execution service address "
            + _env_help("AGENTS_EXECUTION_ADDRESS", DEFAULT_EXECUTION_ADDRESS),
        )
        return parser

    def new() -> argparse.ArgumentParser:
        return _Parser(add_help=False, parents=[output])

    return {
        "vault": vault_address(new()),
        "execution": execution_address(new()),
        "both": execution_address(vault_address(new())),  # `keys list` asks both
    }


Handler = Callable[[argparse.Namespace], int]


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parents = _common_parents()
    parser = _Parser(
        prog=prog,
        description="Manage workspace API keys and run agents on the key vault and execution "
        "services (mTLS).",
        epilog="Run any command with --help for its options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(
        group: Any, name: str, service: str, handler: Handler, help: str, *, admin: bool = False
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, parents=[parents[service]], help=help, description=help
        )
        sub.set_defaults(handler=handler, admin=admin)
        return sub

    def workspace(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("workspace", metavar="WORKSPACE", help="workspace id, e.g. demo")

    def provider(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("provider", metavar="PROVIDER", type=_provider, help="openai or anthropic")

    keys = commands.add_parser("keys", help="a workspace's provider API keys (key vault)")
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    sub = leaf(
        keys_commands,
        "set",
        "vault",
        cmd_keys_set,
        "store or replace a key, read from an environment variable or standard input",
    )
    workspace(sub)
    provider(sub)
    source = sub.add_mutually_exclusive_group()
    source.add_argument(
        "--from-env",
        metavar="VAR",
        default=DEFAULT_KEY_ENV,
        help=f"read the key from this environment variable (default {DEFAULT_KEY_ENV})",
    )
    source.add_argument(
        "--stdin", action="store_true", help="read the key from standard input (prompts on a tty)"
    )
    sub.add_argument(
        "--base-url",
        default="",
        help="endpoint to call with this key instead of the provider's own, for either "
        "provider (a proxy, a self-hosted OpenAI-compatible server, the local emulator)",
    )

    for name, handler, text in (
        ("get", cmd_keys_get, "show a key's metadata (never the key)"),
        ("delete", cmd_keys_delete, "delete a key"),
    ):
        sub = leaf(keys_commands, name, "vault", handler, text)
        workspace(sub)
        provider(sub)
    sub = leaf(keys_commands, "list", "both", cmd_keys_list, "list a workspace's keys")
    workspace(sub)
    sub = leaf(
        keys_commands,
        "test",
        "execution",
        cmd_keys_test,
        "check the stored key (or a candidate) against the provider; exit 1 when invalid",
    )
    workspace(sub)
    provider(sub)
    sub.add_argument(
        "--candidate-from-env",
        metavar="VAR",
        help="check the key in this environment variable instead of the stored one",
    )
    sub.add_argument("--base-url", default="", help="endpoint for the candidate key")

    sub = leaf(
        commands,
        "execute",
        "execution",
        cmd_execute,
        "run a prompt or an agent: output streams to stdout, a summary line goes to stderr",
    )
    workspace(sub)
    sub.add_argument(
        "--agent",
        required=True,
        help="with --input: the agent to run (id or name); otherwise the agent id the ad hoc "
        "execution is recorded for",
    )
    sub.add_argument(
        "--input",
        metavar="JSON|@FILE",
        help="run the agent with this input (JSON text, or @FILE to read it from a file)",
    )
    sub.add_argument("--provider", type=_provider, help="ad hoc: openai or anthropic")
    sub.add_argument("--model", help="ad hoc: e.g. gpt-4o-mini")
    sub.add_argument(
        "--route",
        action="append",
        type=_route,
        metavar="PROVIDER:MODEL",
        help="ad hoc, instead of --provider and --model: where to run, in order of preference "
        "(repeatable; the next runs when one fails, e.g. is overloaded)",
    )
    sub.add_argument(
        "--output-schema",
        metavar="FILE",
        help="ad hoc: a JSON Schema file the output must match (structured output)",
    )
    sub.add_argument("--system", help="system message")
    sub.add_argument("--max-tokens", type=_positive, metavar="N", help="maximum output tokens")
    sub.add_argument("--temperature", type=float, metavar="T", help="sampling temperature, 0-2")
    sub.add_argument("--request-id", metavar="ID", help="idempotency key, unique per workspace")
    sub.add_argument(
        "--label", action="append", type=_label, metavar="KEY=VALUE", help="repeatable"
    )
    sub.add_argument(
        "prompt",
        metavar="PROMPT",
        nargs="?",
        help="ad hoc: the user message; - reads standard input",
    )

    executions = commands.add_parser("executions", help="execution history")
    ex_commands = executions.add_subparsers(
        dest="executions_command", metavar="COMMAND", required=True
    )
    sub = leaf(
        ex_commands, "list", "execution", cmd_executions_list, "list executions, newest first"
    )
    workspace(sub)
    sub.add_argument("--agent", help="only this agent's")
    sub.add_argument("--state", choices=STATES, help="only executions in this state")
    sub.add_argument("--since", type=_since, metavar="DURATION", help="e.g. 1h, 7d")
    sub.add_argument("--limit", type=_positive, default=20, help="at most N (default 20)")
    sub = leaf(ex_commands, "get", "execution", cmd_executions_get, "show one execution")
    sub.add_argument("name", metavar="NAME", help="workspaces/{workspace}/executions/{id}")
    sub = leaf(
        ex_commands, "cancel", "execution", cmd_executions_cancel, "cancel a running execution"
    )
    sub.add_argument("name", metavar="NAME", help="workspaces/{workspace}/executions/{id}")

    sub = leaf(commands, "stats", "execution", cmd_stats, "an agent's statistics over a window")
    workspace(sub)
    sub.add_argument("agent", metavar="AGENT")
    sub.add_argument(
        "--since",
        type=_since,
        default=dt.timedelta(hours=24),
        metavar="DURATION",
        help="window length back from now, e.g. 1h, 24h, 7d (default 24h)",
    )

    agents = commands.add_parser("agents", help="agents: instructions, route and JSON Schemas")
    agent_commands = agents.add_subparsers(dest="agents_command", metavar="COMMAND", required=True)

    def agent_flags(sub: argparse.ArgumentParser, *, create: bool) -> None:
        workspace(sub)
        sub.add_argument("agent", metavar="AGENT", help="agent id, e.g. support-bot")
        route = "" if create else " (changes the first route)"
        sub.add_argument("--provider", type=_provider, help="openai or anthropic" + route)
        sub.add_argument("--model", help="e.g. gpt-4o-mini" + route)
        sub.add_argument(
            "--route",
            action="append",
            type=_route,
            metavar="PROVIDER:MODEL",
            help="instead of --provider and --model: where the agent runs, in order of "
            "preference (repeatable, up to 4; replaces every route)",
        )
        sub.add_argument(
            "--fallback-on",
            action="append",
            choices=[*FALLBACK_TRIGGERS, "none"],
            metavar="TRIGGER",
            help="move to the next route on this failure (repeatable; default: rate_limited, "
            "overloaded, server_error, unreachable, context_window_exceeded; also auth_failed; "
            "none: never)",
        )
        sub.add_argument("--max-tokens", type=_positive, metavar="N", help="maximum output tokens")
        sub.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
        sub.add_argument("--instructions", metavar="TEXT", help="system prompt; @FILE reads a file")
        sub.add_argument("--display-name", metavar="TEXT")
        sub.add_argument("--description", metavar="TEXT")
        sub.add_argument(
            "--input-schema", metavar="FILE", help="JSON Schema (draft 2020-12) of the input"
        )
        sub.add_argument(
            "--output-schema",
            metavar="FILE",
            help="JSON Schema of the output (object root), for structured output",
        )
        sub.add_argument(
            "--label",
            action="append",
            type=_label,
            metavar="KEY=VALUE",
            help="repeatable" + ("" if create else "; replaces all labels"),
        )

    sub = leaf(agent_commands, "create", "execution", cmd_agents_create, "define an agent")
    agent_flags(sub, create=True)
    sub = leaf(
        agent_commands,
        "update",
        "execution",
        cmd_agents_update,
        "change the fields given (only those); --etag makes it conditional",
    )
    agent_flags(sub, create=False)
    sub.add_argument(
        "--clear",
        action="append",
        choices=[f.replace("_", "-") for f in AGENT_FIELDS],
        metavar="FIELD",
        help="empty this field (repeatable): "
        + ", ".join(f.replace("_", "-") for f in AGENT_FIELDS),
    )
    sub.add_argument("--etag", help="only if the agent is still at this version")
    sub = leaf(agent_commands, "get", "execution", cmd_agents_get, "show an agent")
    workspace(sub)
    sub.add_argument("agent", metavar="AGENT")
    sub = leaf(agent_commands, "list", "execution", cmd_agents_list, "list agents by id")
    workspace(sub)
    sub.add_argument("--limit", type=_positive, default=100, help="at most N (default 100)")
    sub = leaf(agent_commands, "delete", "execution", cmd_agents_delete, "delete an agent")
    workspace(sub)
    sub.add_argument("agent", metavar="AGENT")
    sub.add_argument("--etag", help="only if the agent is still at this version")

    _budget_commands(commands, leaf, workspace)

    admin = commands.add_parser("admin", help="key vault administration (admin certificate)")
    admin_commands = admin.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    sub = leaf(
        admin_commands,
        "rewrap",
        "vault",
        cmd_admin_rewrap,
        "re-encrypt every key under the primary master key",
        admin=True,
    )
    sub.add_argument("--batch-size", type=_positive, default=0, help="keys per transaction")
    sub = leaf(
        admin_commands, "audit", "vault", cmd_admin_audit, "audit records, newest first", admin=True
    )
    sub.add_argument(
        "workspace", nargs="?", default="-", metavar="WORKSPACE", help="a workspace, or - for all"
    )
    sub.add_argument("--limit", type=_positive, default=50, help="at most N (default 50)")
    return parser


# --- entry point ------------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _client_error_line(err: ClientError) -> str:
    line = str(err)
    if err.execution_name and err.execution_name not in line:
        line += f" (execution {err.execution_name})"
    return line


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run the CLI; returns the exit code (`--help` and usage errors included)."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        handler: Handler = args.handler
        return handler(args)
    except ClientError as err:
        _error(_client_error_line(err))
        return 1
    except UsageProblem as err:
        _error(str(err))
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # certificate files
        where = f" {err.filename}" if err.filename else ""
        _error(f"cannot read{where}: {err.strerror or err} (see --ca, --cert, --key)")
        return 2
    except Exception as err:  # never a traceback for a user; AGENTS_DEBUG=1 shows it
        if os.environ.get("AGENTS_DEBUG"):
            raise
        _error(f"unexpected {type(err).__name__}: {err}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
