"""Calling again what failed because the server could not be reached.

``UNAVAILABLE`` means the call got no answer: the connection broke, or the
server is restarting or changing leaders. A call that changes nothing, or
changes nothing twice (a deploy of the same definition, a start with a
``request_id``), is made again after a pause that doubles each time, with
jitter so that many clients do not come back at once. Any other status is
the server's answer and is raised as it is. The same policy as the Rust
client's ``client/src/retry.rs``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a call that found the server
    unavailable is made again."""

    # Calls after the first one.
    retries: int = 4
    # The pause before the first retry, in seconds; each next one doubles it.
    first_pause: float = 0.1
    # The longest pause.
    longest_pause: float = 2.0

    def pause(self, attempt: int) -> float:
        """The pause before retry ``attempt`` (0: the first): between half
        and all of ``first_pause * 2**attempt``, at most ``longest_pause``."""
        full = min(self.first_pause * (1 << min(attempt, 16)), self.longest_pause)
        return full / 2 + random.uniform(0, full / 2)

    def may_retry(self, error: grpc.RpcError, attempt: int) -> bool:
        """Whether a call that failed with ``error`` on try ``attempt``
        (0: the first) is made again."""
        return (
            isinstance(error, grpc.Call)
            and error.code() == grpc.StatusCode.UNAVAILABLE
            and attempt < self.retries
        )

    def wait(self, attempt: int) -> None:
        """Pauses before retry ``attempt``."""
        _sleep(self.pause(attempt))

    def call(self, call: Callable[[], T], sleep: Callable[[float], None] | None = None) -> T:
        """``call()``'s answer; made again after a pause while it fails with
        ``UNAVAILABLE`` and retries are left."""
        attempt = 0
        while True:
            try:
                return call()
            except grpc.RpcError as error:
                if not self.may_retry(error, attempt):
                    raise
                (sleep or _sleep)(self.pause(attempt))
                attempt += 1


def _sleep(seconds: float) -> None:
    # Looked up when called, so that a test can see (or use) each pause.
    time.sleep(seconds)


NO_RETRY = Retry(retries=0)
