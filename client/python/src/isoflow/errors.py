"""The client's error: what the server refused, with its ``google.rpc`` details.

A call the server refused or failed raises :class:`IsoflowError` with the
gRPC code and the server's one-sentence message untouched, and the
``google.rpc`` details it sent in the ``grpc-status-details-bin`` trailer:
a refused definition's problems one by one (:attr:`IsoflowError.problems`,
from ``google.rpc.BadRequest``) and the ``google.rpc.ErrorInfo`` reason
(``INVALID_DEFINITION``) and metadata. The few errors made on this side
(a watch that ended early, a deploy too large for one call) are
``IsoflowError`` with ``code`` None; bad arguments are ``ValueError`` and
unreadable files ``OSError``, as in the rest of Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

# The trailer that carries a serialized google.rpc.Status.
DETAILS_KEY = "grpc-status-details-bin"

# The google.rpc detail messages the API sends or may send, by type.
_DETAIL_TYPES = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.RequestInfo,
)


@dataclass(frozen=True)
class Problem:
    """One problem of a definition the server refused: where, and what.

    ``file`` is the definition's name as deployed; ``line`` is 1-based, 0
    when the problem has no line (a code file that was not sent); ``step``
    is the step's id (or ``#2`` for a step without a usable one) when the
    problem is in a step.
    """

    file: str
    line: int
    step: str | None
    message: str

    @classmethod
    def from_violation(cls, field_: str, description: str) -> Problem:
        """A ``BadRequest`` field violation as the server writes it:
        ``field`` is ``file:line`` (or the file alone), ``description`` the
        rest of the sentence, ``step "id": `` first for a problem in a step.
        """
        file, line = field_, 0
        head, sep, tail = field_.rpartition(":")
        if sep and tail.isascii() and tail.isdigit() and int(tail) < 2**32:
            file, line = head, int(tail)
        step, message = None, description
        if description.startswith("step "):
            name, sep, rest = description[len("step ") :].partition(": ")
            if sep:
                step, message = name.strip('"'), rest
        return cls(file=file, line=line, step=step, message=message)

    def __str__(self) -> str:
        text = self.file
        if self.line > 0:
            text += f":{self.line}"
        if self.step is not None:
            text += f': step "{self.step}"'
        return f"{text}: {self.message}"


@dataclass(eq=False)
class IsoflowError(Exception):
    """A call that failed: ``str(error)`` is the server's sentence.

    ``code`` is the gRPC status code (``None`` for an error made on this
    side); ``details`` the decoded ``google.rpc`` detail messages;
    ``problems`` a refused definition's problems, in the order of their
    lines (empty for any other error); ``reason`` and ``metadata`` the
    ``google.rpc.ErrorInfo``'s (``INVALID_DEFINITION``, with ``file``,
    ``line`` and ``step`` of the first problem).
    """

    message: str
    code: grpc.StatusCode | None = None
    details: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, prefix: str = "") -> IsoflowError:
        """The error a failed call raised, its details decoded."""
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        message = (error.details() if isinstance(error, grpc.Call) else None) or ""
        if not message:
            message = code.value[1]
        trailers = error.trailing_metadata() if isinstance(error, grpc.Call) else None
        return cls(message=prefix + message, code=code, details=decode_details(trailers))

    @property
    def problems(self) -> list[Problem]:
        return [
            Problem.from_violation(v.field, v.description)
            for detail in self.details
            if isinstance(detail, error_details_pb2.BadRequest)
            for v in detail.field_violations
        ]

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        return next((d for d in self.details if isinstance(d, error_details_pb2.ErrorInfo)), None)

    @property
    def reason(self) -> str | None:
        info = self.error_info
        return info.reason if info is not None else None

    @property
    def metadata(self) -> dict[str, str]:
        info = self.error_info
        return dict(info.metadata) if info is not None else {}


def decode_details(trailers: Any) -> list[Any]:
    """The detail messages of a ``grpc-status-details-bin`` trailer: the
    known ``google.rpc`` types decoded, others left as ``Any``."""
    for key, value in trailers or ():
        if key != DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        return [_unpack(detail) for detail in status.details]
    return []


def _unpack(detail: any_pb2.Any) -> Any:
    for kind in _DETAIL_TYPES:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    return detail
