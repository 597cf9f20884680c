"""`python -m service_kit.healthcheck ADDRESS`: exit 0 when the service there is SERVING.

A container health check over the services' own mTLS: it calls ``grpc.health.v1.Health/Check``
with a workload's development certificate (``--workload``, from ``--certs-dir``, default
``$CERTS_DIR`` or ``certs``) and prints the status. Exit status 1: NOT_SERVING, unreachable,
or the call failed (the reason is printed on standard error).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_kit.tls import TlsFiles, channel_credentials


def check(address: str, files: TlsFiles, *, service: str = "", timeout: float = 3.0) -> str:
    """The health status name (``SERVING``, ``NOT_SERVING``, ...) of ``service`` at
    ``address``; raises grpc.RpcError when the call fails."""
    with grpc.secure_channel(address, channel_credentials(files)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service_kit.healthcheck",
        description="Exit 0 when the gRPC service at ADDRESS reports SERVING.",
    )
    parser.add_argument("address", help="host:port, e.g. localhost:50051")
    parser.add_argument("--workload", default="app", help="whose certificate to present")
    parser.add_argument(
        "--certs-dir", type=Path, default=Path(os.environ.get("CERTS_DIR") or "certs")
    )
    parser.add_argument("--service", default="", help="service name; empty: the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    try:
        status = check(
            args.address,
            TlsFiles.for_workload(args.certs_dir, args.workload),
            service=args.service,
            timeout=args.timeout,
        )
    except OSError as exc:  # a certificate file is missing or unreadable
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        code = err.code().name if isinstance(err, grpc.Call) else "UNKNOWN"
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        print(f"unhealthy: {code}: {details}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
