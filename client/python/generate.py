"""Generates the Python code for Isoflow's public API.

Writes ``src/isoflow/v1/api_pb2.py`` (messages), ``api_pb2.pyi`` (their
types) and ``api_pb2_grpc.py`` (stubs) from ``proto/isoflow/v1/api.proto``
with grpcio-tools. The output is committed, so that installing the package
needs no code generator; ``tests/test_generated.py`` fails when it is not
what the ``.proto`` gives. Only ``isoflow/v1/api.proto`` is generated: the
cluster protocol (``isoflow/cluster/v1``) is internal to the nodes.

    python generate.py           # write the files
    python generate.py --check   # exit 1, naming the files, when they differ

The proto's path (``isoflow/v1/api.proto``) is also the Python module's
(``isoflow.v1.api_pb2``), so the generated imports land in this package.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = "isoflow/v1/api.proto"
OUT = HERE / "src"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")
# The version the committed files were made with: their headers name it,
# and pyproject.toml's dependencies follow from it.
TOOLS_VERSION = "1.85.1"


def generate(out: Path) -> list[Path]:
    """Writes the generated files under ``out`` (as ``out/isoflow/v1/...``)."""
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    (out / "isoflow" / "v1").mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            PROTO,
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO} (exit {status})")
    return [out / "isoflow" / "v1" / name for name in GENERATED]


def stale() -> list[str]:
    """The committed files that differ from what the ``.proto`` gives now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            path.name
            for path in fresh
            if not (OUT / "isoflow" / "v1" / path.name).exists()
            or (OUT / "isoflow" / "v1" / path.name).read_bytes() != path.read_bytes()
        ]


def tools_version() -> str:
    return importlib.metadata.version("grpcio-tools")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if tools_version() != TOOLS_VERSION:
        print(
            f"grpcio-tools {tools_version()} is installed; the committed code is made with "
            f"{TOOLS_VERSION} (pip install grpcio-tools=={TOOLS_VERSION}, or change "
            "TOOLS_VERSION here and the dependencies in pyproject.toml together)",
            file=sys.stderr,
        )
        return 1
    if args.check:
        differ = stale()
        if differ:
            print(f"out of date: {', '.join(differ)}; run python generate.py", file=sys.stderr)
            return 1
        return 0
    for path in generate(OUT):
        print(path.relative_to(HERE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
