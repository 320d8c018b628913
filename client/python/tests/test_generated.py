"""The committed generated code is what proto/isoflow/v1/api.proto gives
(the Python twin of proto/tests/generated.rs)."""

from __future__ import annotations

import importlib.util

from conftest import PYTHON_ROOT

spec = importlib.util.spec_from_file_location("generate", PYTHON_ROOT / "generate.py")
assert spec is not None and spec.loader is not None
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


def test_the_committed_code_is_current() -> None:
    installed = generate.tools_version()
    assert installed == generate.TOOLS_VERSION, (
        f"grpcio-tools {installed} is installed; the committed code is made with "
        f"{generate.TOOLS_VERSION} (deploy/scripts/setup.sh installs it)"
    )
    stale = generate.stale()
    assert not stale, f"out of date: {', '.join(stale)}; run python client/python/generate.py"


def test_only_the_public_api_is_shipped() -> None:
    shipped = sorted(
        p.name
        for p in (PYTHON_ROOT / "src" / "isoflow").rglob("*_pb2*")
        if p.suffix in (".py", ".pyi")
    )
    assert shipped == ["api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"]
