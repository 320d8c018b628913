"""The connection both clients share: the channel, the token, retries.

A server is ``http://host:port`` (plain HTTP/2; a bare ``host:port`` means
this) or ``https://host:port`` (TLS: the server's certificate is checked
against the CA file given, else the system's roots). Every call carries
``authorization: Bearer <token>`` when there is a token. Messages are
bounded at 4 MiB both ways, as the server's are; payloads travel in chunks
of at most 1 MiB, so none comes near it.

The channel connects lazily: a server that cannot be reached shows on the
first call, as an :class:`~isoflow.errors.IsoflowError` with code
``UNAVAILABLE`` whose sentence starts ``cannot connect to <server>``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from isoflow._retry import NO_RETRY, Retry
from isoflow.errors import IsoflowError

T = TypeVar("T")

# The largest chunk of a payload in one message (proto/src/lib.rs CHUNK_BYTES).
CHUNK_BYTES = 1 << 20
# The largest message either side accepts (proto/src/lib.rs MAX_MESSAGE_BYTES).
MAX_MESSAGE_BYTES = 4 * CHUNK_BYTES
# What a PEM certificate starts with.
CERTIFICATE_PEM = b"-----BEGIN CERTIFICATE-----"


class Connection:
    """A channel to an Isoflow node, with the token its calls carry.

    Usable as a context manager, which closes the channel; calls may be
    made from several threads at once.
    """

    def __init__(
        self,
        server: str,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        *,
        retries: int = 4,
    ) -> None:
        self.server = server if "://" in server else f"http://{server}"
        scheme, _, address = self.server.partition("://")
        address = address.rstrip("/")
        if not address or "/" in address:
            raise ValueError(f"invalid server address {server!r}: expected http(s)://host:port")
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token is not None:
            bearer = f"Bearer {token}"
            if not bearer.isascii() or not bearer.isprintable():
                raise ValueError("the token holds characters a header cannot carry")
            self._metadata = (("authorization", bearer),)
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # grpc waits before connecting again after a failure (1 s, growing
            # to 2 min by default) and meanwhile fails calls at once, so the
            # retries' pauses (100 ms doubling to 2 s) could all pass in that
            # wait. The same bounds here let a retry find the server back.
            # (Not grpc.min_reconnect_backoff_ms: it is also the least time a
            # connection attempt is given, 20 s by default.)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if scheme == "https":
            if not _has_port(address):
                address += ":443"
            roots = _read_ca(ca_file) if ca_file is not None else _system_roots()
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(address, credentials, options)
        elif scheme == "http":
            if ca_file is not None:
                raise ValueError(
                    f"a CA certificate was given, but {self.server} is not an https:// "
                    "address: the connection would not use TLS"
                )
            if not _has_port(address):
                address += ":80"
            self._channel = grpc.insecure_channel(address, options)
        else:
            raise ValueError(f"invalid server address {server!r}: the scheme must be http or https")
        self._retry = Retry(retries=retries)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never the token.
        return f"{type(self).__name__}({self.server!r})"

    def _error(self, error: grpc.RpcError) -> IsoflowError:
        prefix = ""
        if (
            isinstance(error, grpc.Call)
            and error.code() == grpc.StatusCode.UNAVAILABLE
            and (error.details() or "").startswith("failed to connect")
        ):
            prefix = f"cannot connect to {self.server}: "
        return IsoflowError.from_rpc_error(error, prefix)

    def _call(self, call: Callable[..., T], request: Any, *, retry: bool = True) -> T:
        """A unary (or client-streaming) call: ``request`` is the message,
        or a function that makes the request iterator again for each try."""
        policy = self._retry if retry else NO_RETRY

        def attempt() -> T:
            message = request() if callable(request) else request
            return call(message, metadata=self._metadata)

        try:
            return policy.call(attempt)
        except grpc.RpcError as error:
            raise self._error(error) from None

    def _stream(
        self,
        call: Callable[..., Any],
        request: Any,
        *,
        retry: bool = True,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """The messages of a server-streaming call, lazily. A call that fails
        with ``UNAVAILABLE`` before its first message is made again (only
        when ``retry``): grpc's Python API does not tell response headers
        apart, so "nothing received yet" stands for the Rust client's
        "no response yet". Closing the iterator cancels the call."""
        policy = self._retry if retry else NO_RETRY
        attempt = 0
        while True:
            message = request() if callable(request) else request
            responses = call(message, metadata=self._metadata, timeout=timeout)
            received = False
            try:
                for response in responses:
                    received = True
                    yield response
                return
            except grpc.RpcError as error:
                if received or not policy.may_retry(error, attempt):
                    raise self._error(error) from None
            finally:
                responses.cancel()
            policy.wait(attempt)
            attempt += 1

    def _pages(self, page: Callable[[str], tuple[list[T], str]]) -> Iterator[T]:
        """Every item of a list, page after page: ``page(token)`` gives a
        page's items and the next token (empty after the last page)."""
        token = ""
        while True:
            items, token = page(token)
            yield from items
            if not token:
                return


def _has_port(address: str) -> bool:
    # "[::1]:7700", "host:7700"; a bare IPv6 address in brackets has none.
    host, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and not host.endswith(":")


def _read_ca(ca_file: str | os.PathLike[str]) -> bytes:
    pem = Path(ca_file).read_bytes()
    if CERTIFICATE_PEM not in pem:
        raise ValueError(
            f"the CA certificate {os.fspath(ca_file)} holds no PEM certificate "
            "(-----BEGIN CERTIFICATE-----)"
        )
    return pem


def _system_roots() -> bytes | None:
    """The system's CA bundle: OpenSSL's default file (``SSL_CERT_FILE``
    when set); None lets grpc use the roots it bundles."""
    cafile = ssl.get_default_verify_paths().cafile
    return Path(cafile).read_bytes() if cafile else None
