"""Generate Python messages, gRPC stubs and type stubs from protos/ into clients/gen/.

protoc writes absolute imports (`from keyvault.v1 import ...`) that only resolve when the
output folder is on sys.path; we rewrite them to live under `clients.gen` so the generated
code is an ordinary subpackage. (protoletariat does this too, but pins protobuf < 6.)

Usage: python tools/gen_protos.py [OUTPUT_DIR]   (default clients/gen)
"""

from __future__ import annotations

import re
import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_PREFIX = "clients.gen"
OWN_PACKAGES = ("keyvault", "execution")

_IMPORT_FROM = re.compile(rf"^from ({'|'.join(OWN_PACKAGES)})\.", re.MULTILINE)
_QUALIFIED = re.compile(rf"(?<![\w.])({'|'.join(OWN_PACKAGES)})\.v1\.")


def _rewrite(path: Path) -> None:
    text = path.read_text()
    text = _IMPORT_FROM.sub(rf"from {PACKAGE_PREFIX}.\1.", text)
    if path.suffix == ".pyi":
        text = _QUALIFIED.sub(rf"{PACKAGE_PREFIX}.\1.v1.", text)
    path.write_text(text)


def generate(out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    bin_dir = Path(sys.executable).parent  # the mypy-protobuf plugins live beside the interpreter
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--mypy_out={out_dir}",
            f"--mypy_grpc_out={out_dir}",
            *protos,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    for folder in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    for path in out_dir.rglob("*.py*"):
        if path.suffix in (".py", ".pyi") and path.name != "__init__.py":
            _rewrite(path)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "clients" / "gen")
