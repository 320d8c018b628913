"""The client's own rules, without a server: error details, retries,
chunks, which files a deploy takes, what a connection accepts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

import isoflow
from isoflow import CHUNK_BYTES, IsoflowError, Problem, v1
from isoflow._definition import read_definition
from isoflow._retry import Retry
from isoflow.client import _is_path, _start_requests
from isoflow.errors import DETAILS_KEY


class FakeError(grpc.RpcError, grpc.Call):
    """A failed call as grpc raises it: code, message, trailers."""

    def __init__(self, code: grpc.StatusCode, message: str = "", trailers: Any = ()) -> None:
        self._code, self._message, self._trailers = code, message, tuple(trailers)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        return self._trailers

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def test_a_refused_definitions_problems_come_from_its_details() -> None:
    status = status_pb2.Status(code=3, message='flows/orders.yaml:12: step "post": ...')
    bad_request = error_details_pb2.BadRequest()
    for field, description in [
        ("flows/orders.yaml:12", 'step "post": unknown step "fech"'),
        ("flows/orders.yaml:3", "name is empty"),
        ("orders.yaml", 'code file "t.js" was not sent'),
        ("c:/defs/x.yaml:4", "step unknown"),
    ]:
        bad_request.field_violations.add(field=field, description=description)
    status.details.add().Pack(bad_request)
    info = error_details_pb2.ErrorInfo(reason="INVALID_DEFINITION", domain="isoflow")
    info.metadata["line"] = "12"
    status.details.add().Pack(info)
    error = IsoflowError.from_rpc_error(
        FakeError(
            grpc.StatusCode.INVALID_ARGUMENT,
            status.message,
            [("other", "x"), (DETAILS_KEY, status.SerializeToString())],
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error) == status.message
    assert error.reason == "INVALID_DEFINITION" and error.metadata == {"line": "12"}
    problems = error.problems
    assert problems[0] == Problem("flows/orders.yaml", 12, "post", 'unknown step "fech"')
    assert str(problems[0]) == 'flows/orders.yaml:12: step "post": unknown step "fech"'
    assert (problems[1].line, problems[1].step) == (3, None)
    assert (problems[2].file, problems[2].line, str(problems[2])) == (
        "orders.yaml",
        0,
        'orders.yaml: code file "t.js" was not sent',
    )
    # "step " without ": " is a message, not a step.
    assert problems[3] == Problem("c:/defs/x.yaml", 4, None, "step unknown")


def test_a_status_without_details_or_message_is_still_one_sentence() -> None:
    plain = IsoflowError.from_rpc_error(
        FakeError(grpc.StatusCode.NOT_FOUND, "run r-1 does not exist")
    )
    assert (str(plain), plain.problems, plain.reason, plain.metadata) == (
        "run r-1 does not exist",
        [],
        None,
        {},
    )
    bare = IsoflowError.from_rpc_error(FakeError(grpc.StatusCode.UNAVAILABLE))
    assert str(bare) == "unavailable"


def test_an_unavailable_server_is_asked_again_until_it_answers() -> None:
    calls, pauses = [], []

    def call() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise FakeError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        return "answer"

    assert Retry(retries=4).call(call, sleep=pauses.append) == "answer"
    assert len(calls) == 3 and len(pauses) == 2


def test_retries_stop_at_the_limit_and_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise FakeError(grpc.StatusCode.UNAVAILABLE, "down")

    with pytest.raises(grpc.RpcError):
        Retry(retries=2).call(down, sleep=lambda _: None)
    assert len(calls) == 3, "the first call and 2 retries"

    calls.clear()

    def missing() -> None:
        calls.append(1)
        raise FakeError(grpc.StatusCode.NOT_FOUND, "run r does not exist")

    with pytest.raises(grpc.RpcError):
        Retry(retries=5).call(missing, sleep=lambda _: None)
    assert len(calls) == 1


def test_pauses_double_with_jitter_up_to_the_longest() -> None:
    retry = Retry()
    for attempt in range(8):
        full = min(0.1 * 2**attempt, 2.0)
        for _ in range(20):
            assert full / 2 <= retry.pause(attempt) <= full


def test_the_target_goes_first_then_the_input_in_bounded_chunks() -> None:
    payload = bytes(i % 251 for i in range(CHUNK_BYTES * 5 // 2))
    parts = list(_start_requests("orders", 3, payload, None))
    assert parts[0].target == v1.RunTarget(integration="orders", version=3)
    chunks = [p.input_chunk for p in parts[1:]]
    assert all(p.WhichOneof("part") == "input_chunk" for p in parts[1:])
    assert len(chunks) == 3 and all(0 < len(c) <= CHUNK_BYTES for c in chunks)
    assert b"".join(chunks) == payload

    exact = list(_start_requests("orders", None, b" " * CHUNK_BYTES, "r-1"))
    assert len(exact) == 2 and exact[0].target.request_id == "r-1"
    assert len(list(_start_requests("orders", None, b"", None))) == 1


def test_a_deploy_takes_the_js_files_under_the_definitions_folder(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text("name: x\n")
    (tmp_path / "transform.js").write_text("a")
    (tmp_path / "lib" / "deep").mkdir(parents=True)
    (tmp_path / "lib" / "deep" / "util.js").write_text("b")
    (tmp_path / "lib" / "notes.txt").write_text("not code")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "hook.js").write_text("hidden")
    (tmp_path / ".hidden.js").write_text("hidden")
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "dep.js").write_text("vendored")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "far.js").write_text("far")
    os.symlink(outside, tmp_path / "linked-folder")
    os.symlink(tmp_path / "transform.js", tmp_path / "alias.js")

    source, files = read_definition(tmp_path / "flow.yaml")
    assert source == "name: x\n"
    assert files == {"transform.js": "a", "lib/deep/util.js": "b", "alias.js": "a"}


def test_a_folder_too_large_for_one_deploy_is_refused(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text("name: x\n")
    (tmp_path / "big.js").write_text("x" * (4 << 20))
    with pytest.raises(IsoflowError, match="exceed what one deploy carries") as caught:
        read_definition(tmp_path / "flow.yaml")
    assert caught.value.code is None
    with pytest.raises(OSError):
        read_definition(tmp_path / "missing.yaml")


def test_a_definition_is_a_path_or_its_text() -> None:
    assert _is_path("flows/orders.yaml") and _is_path(Path("x"))
    assert not _is_path("apiVersion: isoflow.dev/v1\nname: x\n")
    assert not _is_path('{"apiVersion": "isoflow.dev/v1"}')
    assert not _is_path("  [1]")


def test_what_a_connection_refuses_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="header"):
        isoflow.Client("127.0.0.1:1", token="line\nbreak")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="not an https:// address"):
        isoflow.Client("127.0.0.1:1", ca_file=ca)
    ca.write_text("not a certificate")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        isoflow.Client("https://127.0.0.1:1", ca_file=ca)
    with pytest.raises(OSError):
        isoflow.Client("https://127.0.0.1:1", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="scheme"):
        isoflow.Client("ftp://127.0.0.1:1")
    client = isoflow.Client("127.0.0.1:1", token="secret-token")
    assert client.server == "http://127.0.0.1:1" and "secret" not in repr(client)
    client.close()


def test_status_names_drop_the_prefix() -> None:
    assert isoflow.status_name(v1.RUN_STATUS_CANCELLED) == "CANCELLED"
