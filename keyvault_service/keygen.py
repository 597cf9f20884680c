"""Print a new master key: ``python -m keyvault_service.keygen [--version N]``.

Without --version it prints 64 hex characters (usable as ENCRYPTION_KEY); with it,
``N:<hex>``, ready to append to KEYVAULT_MASTER_KEYS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .crypto import MAX_KEY_VERSION
from .keyring import generate_master_key


def _key_version(text: str) -> int:
    try:
        version = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer") from None
    if not 1 <= version <= MAX_KEY_VERSION:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_KEY_VERSION}")
    return version


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keyvault_service.keygen",
        description="Print a new 256-bit master key for the key vault.",
    )
    parser.add_argument(
        "--version",
        type=_key_version,
        metavar="N",
        help="print 'N:<hex>' for KEYVAULT_MASTER_KEYS instead of bare hex",
    )
    args = parser.parse_args(argv)
    key = generate_master_key()
    print(key if args.version is None else f"{args.version}:{key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
