"""The client of Isoflow's API (``isoflow.v1.Isoflow``, proto/isoflow/v1/api.proto):
deploy integrations, start runs, follow them and read their outputs.

Messages are the generated ones (:mod:`isoflow.v1`: ``v1.Run``,
``v1.Step``, ``v1.LogLine``, ...); JSON payloads (inputs, outputs) are
Python values in and out, sent and read in chunks of at most 1 MiB.
Calls that are safe to repeat (reads, deploys, starts with a
``request_id``) are made again when the server is unavailable; the others
(a plain start, a cancel, a credential change) never happen twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from google.protobuf import timestamp_pb2

from isoflow._connection import CHUNK_BYTES, Connection
from isoflow._definition import read_definition
from isoflow.errors import IsoflowError
from isoflow.v1 import api_pb2 as v1
from isoflow.v1 import api_pb2_grpc

# Items asked for per page when a call reads every page.
PAGE = 1_000

# What `Client.watch` yields: a step that finished, a log line, and last
# the run as it ended.
Update = v1.Step | v1.LogLine | v1.Run


def status_name(status: int) -> str:
    """``SUCCEEDED`` for ``v1.RUN_STATUS_SUCCEEDED``, and so on."""
    return v1.RunStatus.Name(status).removeprefix("RUN_STATUS_")


@dataclass(frozen=True)
class Execution:
    """A run started and waited for in one call (:meth:`Client.execute`)."""

    # The run as it ended, with its steps.
    run: v1.Run
    # Its output (parsed JSON) if it succeeded; None otherwise.
    output: Any

    @property
    def succeeded(self) -> bool:
        return self.run.status == v1.RUN_STATUS_SUCCEEDED


class Client(Connection):
    """A connection to an Isoflow node, as one tenant (the token's).

    >>> with Client("https://isoflow.internal:7700", token="...", ca_file="ca.pem") as client:
    ...     client.deploy("flows/orders.yaml")
    ...     result = client.execute("orders-to-erp", {"export_url": "https://shop/export"})
    ...     print(status_name(result.run.status), result.output)

    ``server`` is ``http://host:port`` (a bare ``host:port`` too) or
    ``https://host:port``, whose certificate is checked against
    ``ca_file`` (PEM) or, without one, the system's roots. With a
    ``token``, every call carries ``authorization: Bearer <token>``; an
    ``all`` node without tokens serves everyone as tenant ``local``.
    ``retries``: how often a call safe to repeat is made again after
    ``UNAVAILABLE``, after pauses that double from 100 ms up to 2 s (with
    jitter); 0 turns retries off.

    Every call raises :class:`~isoflow.errors.IsoflowError` when the
    server refuses it or cannot be reached.
    """

    def __init__(
        self,
        server: str,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        *,
        retries: int = 4,
    ) -> None:
        super().__init__(server, token, ca_file, retries=retries)
        self._stub = api_pb2_grpc.IsoflowStub(self._channel)

    # Integrations.

    def deploy(
        self,
        definition: str | os.PathLike[str],
        *,
        file_name: str | None = None,
        files: Mapping[str, str] | None = None,
    ) -> v1.Integration:
        """Validates and stores a version of an integration.

        ``definition`` is a path (a ``Path``, or a one-line string that
        does not start with ``{`` or ``[``) or the definition itself (YAML
        or JSON text). From a path, the definition goes with every ``*.js``
        file under its folder, keyed by its ``/``-separated path relative
        to that folder (hidden entries, ``node_modules`` and links to
        folders skipped), and is named in error messages by the path as
        given; ``files`` and ``file_name`` replace those. Given as text,
        ``file_name`` defaults to ``definition``.

        A definition that is wrong raises ``INVALID_ARGUMENT`` with every
        problem in :attr:`IsoflowError.problems`; a version deployed
        before with another definition, ``ALREADY_EXISTS``.
        """
        if _is_path(definition):
            source, found = read_definition(definition)
            name = os.fspath(definition)
        else:
            source, found, name = str(definition), {}, "definition"
        request = v1.DeployIntegrationRequest(
            source=source,
            file_name=file_name if file_name is not None else name,
            files=dict(files) if files is not None else found,
        )
        return self._call(self._stub.DeployIntegration, request)

    def integration(self, name: str, version: int | None = None) -> v1.Integration:
        """One version (None: the latest) of an integration, its stored
        definition (code inlined) in ``definition_json``."""
        request = v1.GetIntegrationRequest(name=name, version=version or 0)
        return self._call(self._stub.GetIntegration, request)

    def integrations(self) -> list[v1.Integration]:
        """The latest version of each integration, definitions left out,
        by name (every page)."""

        def page(token: str) -> tuple[list[v1.Integration], str]:
            request = v1.ListIntegrationsRequest(page_size=PAGE, page_token=token)
            answer = self._call(self._stub.ListIntegrations, request)
            return list(answer.integrations), answer.next_page_token

        return list(self._pages(page))

    # Runs.

    def start(
        self,
        integration: str,
        input: Any = None,
        version: int | None = None,
        request_id: str | None = None,
    ) -> v1.Run:
        """Starts a run of ``integration`` (``version`` None: its latest)
        and returns it as it started.

        ``input`` is any JSON value, or ``bytes`` holding JSON text sent as
        it is. With a ``request_id`` (the caller's, at most 256 bytes) the
        server starts one run per id and answers a repeated call with the
        run the first one started, so the call is retried when the server
        is unavailable; without one it is not.
        """
        payload = _json_bytes(input)
        requests = lambda: _start_requests(integration, version, payload, request_id)  # noqa: E731
        return self._call(self._stub.StartRun, requests, retry=bool(request_id))

    def execute(
        self,
        integration: str,
        input: Any = None,
        version: int | None = None,
        request_id: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Execution:
        """Starts a run and waits for it to end, in one call (ExecuteRun):
        the run as it ended, and its output if it succeeded.

        ``timeout`` (seconds) bounds the wait (``DEADLINE_EXCEEDED``); the
        run goes on if the caller leaves. With a ``request_id``, a call
        made again waits for the run the first one started, so it is
        retried when the server is unavailable.
        """
        payload = _json_bytes(input)
        requests = lambda: _start_requests(integration, version, payload, request_id)  # noqa: E731
        run: v1.Run | None = None
        output = bytearray()
        for part in self._stream(
            self._stub.ExecuteRun, requests, retry=bool(request_id), timeout=timeout
        ):
            kind = part.WhichOneof("part")
            if kind == "run":
                run = part.run
            elif kind == "output_chunk":
                output += part.output_chunk
        if run is None:
            raise IsoflowError("ExecuteRun ended without the run", code=None)
        succeeded = run.status == v1.RUN_STATUS_SUCCEEDED
        return Execution(run=run, output=_parse(bytes(output)) if succeeded else None)

    run_and_wait = execute

    def get_run(self, run_id: str) -> v1.Run:
        """A run with its checkpointed steps; ``NOT_FOUND`` when the
        tenant has no such run."""
        return self._call(self._stub.GetRun, v1.GetRunRequest(run_id=run_id))

    def list_runs(
        self,
        *,
        integration: str | None = None,
        version: int | None = None,
        status: int | str | None = None,
        trigger: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        page_size: int | None = None,
    ) -> Iterator[v1.Run]:
        """The runs that match every filter given, newest first, page after
        page as the iteration reaches them.

        ``status`` is a ``v1.RunStatus`` value or its name (``failed``,
        ``RUN_STATUS_FAILED``); ``trigger`` a kind (``api``, ``webhook``,
        ``cron``, ``rerun``) or one trigger (``cron:nightly``);
        ``created_from`` (inclusive) and ``created_to`` (exclusive) bound
        the creation time (naive datetimes are UTC). ``page_size``: runs
        asked for per call (None: the server's default, 100).
        """

        def page(token: str) -> tuple[list[v1.Run], str]:
            answer = self.list_runs_page(
                page_token=token,
                integration=integration,
                version=version,
                status=status,
                trigger=trigger,
                created_from=created_from,
                created_to=created_to,
                page_size=page_size,
            )
            return list(answer.runs), answer.next_page_token

        return self._pages(page)

    def list_runs_page(
        self,
        *,
        page_token: str = "",
        integration: str | None = None,
        version: int | None = None,
        status: int | str | None = None,
        trigger: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        page_size: int | None = None,
    ) -> v1.ListRunsResponse:
        """One page of :meth:`list_runs` and the token of the next (older)
        page, empty on the last. A page may hold fewer runs than asked,
        even none, and still have a next page: the server reads a bounded
        number of runs per call."""
        request = v1.ListRunsRequest(
            page_size=page_size or 0,
            page_token=page_token,
            integration=integration or "",
            version=version or 0,
            status=_run_status(status),
            trigger=trigger or "",
        )
        if created_from is not None:
            request.create_time_from.CopyFrom(_timestamp(created_from))
        if created_to is not None:
            request.create_time_to.CopyFrom(_timestamp(created_to))
        return self._call(self._stub.ListRuns, request)

    def watch(self, run_id: str, logs: bool = True) -> Iterator[Update]:
        """The run's updates as they come: the steps that finished so far
        (a ``v1.Step`` each), then each as it finishes, with its log lines
        (``v1.LogLine``) when ``logs``; last the run as it ended
        (``v1.Run``), after which the iteration ends. Closing the iterator
        ends the call."""
        request = v1.WatchRunRequest(run_id=run_id, logs=logs)
        for update in self._stream(self._stub.WatchRun, request):
            kind = update.WhichOneof("update")
            if kind is not None:
                yield getattr(update, kind)

    def wait(self, run_id: str, timeout: float | None = None) -> v1.Run:
        """Waits for the run to end and returns it as it ended, steps
        included. ``timeout`` (seconds) bounds the wait."""
        request = v1.WatchRunRequest(run_id=run_id, logs=False)
        for update in self._stream(self._stub.WatchRun, request, timeout=timeout):
            if update.WhichOneof("update") == "finished":
                return update.finished
        raise IsoflowError(f"the updates of run {run_id} ended before the run did")

    def logs(self, run_id: str) -> list[v1.LogLine]:
        """Every log line of the run so far, in order (all pages)."""

        def page(token: str) -> tuple[list[v1.LogLine], str]:
            request = v1.GetRunLogsRequest(run_id=run_id, page_token=token)
            answer = self._call(self._stub.GetRunLogs, request)
            return list(answer.lines), answer.next_page_token

        return list(self._pages(page))

    def output(self, run_id: str) -> Any:
        """The output of a run that succeeded, parsed; ``FAILED_PRECONDITION``
        for a run that has not succeeded."""
        return _parse(self.output_json(run_id))

    def output_json(self, run_id: str) -> bytes:
        """:meth:`output` as the JSON text the server stored, not parsed."""
        request = v1.GetRunOutputRequest(run_id=run_id)
        return b"".join(c.data for c in self._stream(self._stub.GetRunOutput, request))

    def input(self, run_id: str) -> Any:
        """The input the run was started with."""
        request = v1.GetRunInputRequest(run_id=run_id)
        return _parse(b"".join(c.data for c in self._stream(self._stub.GetRunInput, request)))

    def step_output(self, run_id: str, step_key: str) -> Any:
        """The output a step checkpointed (``step_key`` as in
        ``v1.Step.step_key``: ``<loop>/<index>/<step>`` inside a loop)."""
        request = v1.GetStepOutputRequest(run_id=run_id, step_key=step_key)
        return _parse(b"".join(c.data for c in self._stream(self._stub.GetStepOutput, request)))

    def step_input(self, run_id: str, step_key: str) -> Any:
        """The input a code step was given (a failed one too), rendered again
        from the run's input and the checkpoints before it: run the step on
        it locally with ``isoflow eval step.js --input @input.json``."""
        request = v1.GetStepInputRequest(run_id=run_id, step_key=step_key)
        return _parse(b"".join(c.data for c in self._stream(self._stub.GetStepInput, request)))

    def cancel(self, run_id: str) -> v1.Run:
        """Cancels a run: the steps in flight stop, no others start. The
        run as the server has it after the request; ``FAILED_PRECONDITION``
        for a run that already ended."""
        return self._call(self._stub.CancelRun, v1.CancelRunRequest(run_id=run_id), retry=False)

    def rerun(self, run_id: str, version: int | None = None) -> v1.Run:
        """Runs a failed run again from the step it failed in: a new run,
        pending, whose earlier steps are the old run's checkpoints
        (``rerun_of`` and ``from_step`` say so); ``FAILED_PRECONDITION``
        for a run that did not fail. ``version``: another version of the
        integration (a fix deployed since) to run from that step on
        (``from_version`` of the new run says which it moved from);
        ``NOT_FOUND`` if it is not deployed, ``FAILED_PRECONDITION`` if its
        steps up to the failed one are not the run's."""
        request = v1.RerunRunRequest(run_id=run_id)
        if version is not None:
            request.version = version
        return self._call(self._stub.RerunRun, request, retry=False)

    # Triggers.

    def triggers(self, integration: str | None = None) -> list[v1.TriggerInfo]:
        """The triggers of an integration's latest version (None: of every
        integration), with each cron trigger's state."""

        def page(token: str) -> tuple[list[v1.TriggerInfo], str]:
            request = v1.ListTriggersRequest(
                integration=integration or "", page_size=PAGE, page_token=token
            )
            answer = self._call(self._stub.ListTriggers, request)
            return list(answer.triggers), answer.next_page_token

        return list(self._pages(page))

    def set_trigger_paused(self, integration: str, trigger: str, paused: bool) -> v1.TriggerInfo:
        """Pauses or resumes a cron trigger; a paused trigger's ticks pass
        without runs and are not caught up."""
        request = v1.SetTriggerPausedRequest(
            integration=integration, trigger=trigger, paused=paused
        )
        return self._call(self._stub.SetTriggerPaused, request, retry=False)

    # Credentials.

    def set_credential(
        self,
        name: str,
        *,
        bearer: str | None = None,
        basic: tuple[str, str] | None = None,
        header: tuple[str, str] | None = None,
        query: tuple[str, str] | None = None,
        oauth2: v1.OAuth2Credential | None = None,
        origins: Sequence[str] = (),
        allow_plain_http: bool = False,
    ) -> v1.CredentialInfo:
        """Stores a credential for this tenant's http steps, or replaces
        the one of that name. Exactly one kind: ``bearer`` (the token),
        ``basic`` (username, password), ``header`` (name, value),
        ``query`` (parameter, value) or ``oauth2``. ``origins``: the only
        places it may be sent (``https://erp.example.com/api``)."""
        kinds = {
            "bearer": bearer,
            "basic": basic,
            "header": header,
            "query": query,
            "oauth2": oauth2,
        }
        given = [kind for kind, value in kinds.items() if value is not None]
        if len(given) != 1:
            raise ValueError(
                "a credential has exactly one kind: bearer, basic, header, query or oauth2"
            )
        request = v1.SetCredentialRequest(
            name=name, origins=list(origins), allow_plain_http=allow_plain_http
        )
        if bearer is not None:
            request.bearer.token = bearer
        elif basic is not None:
            request.basic.username, request.basic.password = basic
        elif header is not None:
            request.header.header, request.header.value = header
        elif query is not None:
            request.query.param, request.query.value = query
        elif oauth2 is not None:
            request.oauth2.CopyFrom(oauth2)
        return self._call(self._stub.SetCredential, request, retry=False)

    def credentials(self) -> list[v1.CredentialInfo]:
        """This tenant's credentials, by name, without their secrets."""

        def page(token: str) -> tuple[list[v1.CredentialInfo], str]:
            request = v1.ListCredentialsRequest(page_size=PAGE, page_token=token)
            answer = self._call(self._stub.ListCredentials, request)
            return list(answer.credentials), answer.next_page_token

        return list(self._pages(page))

    def rotate_credential(self, name: str, secret: str) -> v1.CredentialInfo:
        """Replaces a credential's secret (token, password, value, or an
        OAuth2 client secret), keeping its kind and origins."""
        request = v1.RotateCredentialRequest(name=name, secret=secret)
        return self._call(self._stub.RotateCredential, request, retry=False)

    def delete_credential(self, name: str) -> bool:
        """Deletes a credential; whether there was one."""
        request = v1.DeleteCredentialRequest(name=name)
        return self._call(self._stub.DeleteCredential, request, retry=False).deleted

    def authorize_credential(self, name: str) -> v1.AuthorizeCredentialResponse:
        """Starts the authorization-code flow of an OAuth2 credential: the
        URL a user opens to sign in at the provider."""
        request = v1.AuthorizeCredentialRequest(name=name)
        return self._call(self._stub.AuthorizeCredential, request, retry=False)


def _is_path(definition: str | os.PathLike[str]) -> bool:
    if isinstance(definition, os.PathLike):
        return True
    text = definition.lstrip()
    return "\n" not in definition and not text.startswith(("{", "["))


def _json_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _parse(data: bytes) -> Any:
    # No chunks at all is null, as in the API.
    return json.loads(data) if data else None


def _start_requests(
    integration: str, version: int | None, payload: bytes, request_id: str | None
) -> Iterator[v1.StartRunRequest]:
    """A StartRun call's messages: the target, then the input in chunks of
    at most 1 MiB, made one at a time as the call sends them."""
    yield v1.StartRunRequest(
        target=v1.RunTarget(
            integration=integration, version=version or 0, request_id=request_id or ""
        )
    )
    view = memoryview(payload)
    for start in range(0, len(view), CHUNK_BYTES):
        yield v1.StartRunRequest(input_chunk=bytes(view[start : start + CHUNK_BYTES]))


def _run_status(status: int | str | None) -> v1.RunStatus:
    if status is None:
        return v1.RUN_STATUS_UNSPECIFIED
    if isinstance(status, str):
        name = status.upper()
        name = name if name.startswith("RUN_STATUS_") else f"RUN_STATUS_{name}"
        return cast(v1.RunStatus, v1.RunStatus.Value(name))
    v1.RunStatus.Name(status)  # ValueError for a number that is no status
    return cast(v1.RunStatus, status)


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp
