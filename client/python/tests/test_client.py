"""The client against a real node: what a user of the package relies on."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import ADMIN_TOKEN, LONG, TOKEN, Held, Node, SecuredNode, free_port

import isoflow
import isoflow._retry
from isoflow import IsoflowError, v1


def unique(prefix: str) -> str:
    # The session's node is shared: each test deploys its own integrations.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def echo(name: str) -> str:
    """Logs two lines, fails when asked, returns its input with a greeting."""
    return f"""apiVersion: isoflow.dev/v1
name: {name}
version: 1
steps:
  - id: echo
    type: code
    source: |
      export default function (input, ctx) {{
        console.log("got", typeof input);
        console.warn("second line");
        if (input && input.fail) throw new Error("asked to fail");
        return {{ hello: "world", input }};
      }}
"""


@pytest.fixture
def client(node: Node) -> isoflow.Client:
    with isoflow.Client(node.address) as connected:
        yield connected


def test_a_definition_with_its_code_files_deploys_from_its_path(
    client: isoflow.Client, tmp_path: Path
) -> None:
    name = unique("files")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "shout.js").write_text(
        "export default function (input) { return input.word.toUpperCase(); }\n"
    )
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        f"apiVersion: isoflow.dev/v1\nname: {name}\nversion: 1\nsteps:\n"
        "  - id: shout\n    type: code\n    file: lib/shout.js\n"
    )
    integration = client.deploy(flow)
    assert (integration.name, integration.version, integration.created) == (name, 1, True)
    assert "toUpperCase" in client.integration(name).definition_json
    # The same definition again is the same version, not a new one.
    again = client.deploy(str(flow))
    assert (again.version, again.created) == (1, False)
    assert name in [i.name for i in client.integrations()]

    result = client.execute(name, {"word": "hey"})
    assert result.succeeded, result.run.error
    assert result.output == "HEY"


def test_a_run_starts_ends_and_gives_its_output_input_and_steps(client: isoflow.Client) -> None:
    name = unique("run")
    client.deploy(echo(name), file_name=f"{name}.yaml")
    run = client.start(name, {"n": 1}, request_id=unique("req"))
    assert run.integration == name and run.run_id
    ended = client.wait(run.run_id, timeout=LONG)
    assert ended.status == v1.RUN_STATUS_SUCCEEDED, ended.error
    assert [s.step_key for s in ended.steps] == ["echo"]
    assert ended.create_time.ToMilliseconds() <= ended.update_time.ToMilliseconds()
    assert client.get_run(run.run_id).status == v1.RUN_STATUS_SUCCEEDED
    assert client.output(run.run_id) == {"hello": "world", "input": {"n": 1}}
    assert client.input(run.run_id) == {"n": 1}
    assert client.step_output(run.run_id, "echo") == {"hello": "world", "input": {"n": 1}}
    lines = client.logs(run.run_id)
    assert [(line.message, line.level) for line in lines] == [
        ("got object", v1.LOG_LEVEL_INFO),
        ("second line", v1.LOG_LEVEL_WARN),
    ]


def test_a_start_with_a_request_id_starts_one_run(client: isoflow.Client) -> None:
    name = unique("once")
    client.deploy(echo(name), file_name=f"{name}.yaml")
    request_id = unique("req")
    first = client.start(name, {}, request_id=request_id)
    second = client.start(name, {}, request_id=request_id)
    assert first.run_id == second.run_id
    assert client.start(name, {}).run_id != first.run_id


def test_execute_answers_with_the_ended_run_and_its_output(client: isoflow.Client) -> None:
    name = unique("execute")
    client.deploy(echo(name), file_name=f"{name}.yaml")
    result = client.execute(name, {"x": [1, 2]}, request_id=unique("req"), timeout=LONG)
    assert result.succeeded
    assert result.output == {"hello": "world", "input": {"x": [1, 2]}}
    assert [s.step_key for s in result.run.steps] == ["echo"]

    failed = client.run_and_wait(name, {"fail": True})
    assert failed.run.status == v1.RUN_STATUS_FAILED
    assert "asked to fail" in failed.run.error
    assert failed.output is None


def test_payloads_larger_than_a_message_travel_in_chunks(client: isoflow.Client) -> None:
    # 5 MiB each way: more than the 4 MiB a message may carry.
    name = unique("big")
    client.deploy(echo(name), file_name=f"{name}.yaml")
    text = "0123456789abcdef" * (5 * 1024 * 1024 // 16)
    result = client.execute(name, {"text": text}, timeout=LONG)
    assert result.succeeded, result.run.error
    assert result.output["input"]["text"] == text
    assert client.output_json(result.run.run_id).count(b"0123456789abcdef") == len(text) // 16
    assert client.input(result.run.run_id) == {"text": text}


def test_a_watched_run_streams_its_log_lines_as_they_come(
    client: isoflow.Client, held: Held
) -> None:
    # The second step waits for the test: the first step's lines must
    # arrive while the run is still going, or the watch never releases it.
    name = unique("watched")
    client.deploy(
        f"""apiVersion: isoflow.dev/v1
name: {name}
version: 1
steps:
  - id: before
    type: code
    source: |
      export default function (input, ctx) {{
        console.log("first");
        console.log("second");
        return input;
      }}
  - id: hold
    type: http
    url: "{{{{ input.base }}}}/hold"
  - id: after
    type: code
    input: "{{{{ steps.hold.output.body }}}}"
    source: |
      export default function (input, ctx) {{
        console.error("third");
        return input;
      }}
""",
        file_name=f"{name}.yaml",
    )
    run = client.start(name, {"base": held.url})
    updates = []
    released_after = None
    for update in client.watch(run.run_id, logs=True):
        updates.append(update)
        messages = [u.message for u in updates if isinstance(u, v1.LogLine)]
        if released_after is None and messages == ["first", "second"]:
            assert held.arrived <= 1 and not isinstance(update, v1.Run)
            released_after = len(updates)
            held.release()
    assert released_after is not None, updates
    logs = [u for u in updates if isinstance(u, v1.LogLine)]
    assert [(u.step_key, u.message) for u in logs] == [
        ("before", "first"),
        ("before", "second"),
        ("after", "third"),
    ]
    assert logs[2].level == v1.LOG_LEVEL_ERROR
    steps = [u.step_key for u in updates if isinstance(u, v1.Step)]
    assert steps == ["before", "hold", "after"]
    finished = updates[-1]
    assert isinstance(finished, v1.Run) and finished.status == v1.RUN_STATUS_SUCCEEDED
    assert client.output(run.run_id) == {"held": True}

    # Without logs: steps and the end only.
    kinds = {type(u).__name__ for u in client.watch(run.run_id, logs=False)}
    assert kinds == {"Step", "Run"}


def test_a_refused_definition_says_each_problem_with_file_line_and_step(
    client: isoflow.Client,
) -> None:
    broken = (
        "apiVersion: isoflow.dev/v1\nname: broken\nversion: 1\nsteps:\n"
        '  - id: fetch\n    type: http\n    url: "{{ steps.fech.output }}"\n'
        "  - id: post\n    type: htp\n"
    )
    with pytest.raises(IsoflowError) as caught:
        client.deploy(broken, file_name="flows/broken.yaml")
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_DEFINITION"
    problems = error.problems
    assert len(problems) >= 2, problems
    for problem in problems:
        assert problem.file == "flows/broken.yaml"
        assert str(problem) in str(error)
    fetch = next(p for p in problems if p.step == "fetch")
    assert fetch.line == 7 and "fech" in fetch.message
    post = next(p for p in problems if p.step == "post")
    assert post.line == 9 and "htp" in post.message
    assert error.metadata["file"] == "flows/broken.yaml"
    assert (error.metadata["line"], error.metadata["step"]) == ("7", "fetch")

    # Any other refusal has no problems.
    with pytest.raises(IsoflowError) as missing:
        client.get_run("no-such-run")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert missing.value.problems == [] and missing.value.reason is None


def test_list_runs_pages_newest_first_and_filters(client: isoflow.Client) -> None:
    name = unique("paged")
    client.deploy(echo(name), file_name=f"{name}.yaml")
    started = [client.execute(name, {"i": i}).run.run_id for i in range(5)]
    failed = client.execute(name, {"fail": True}).run.run_id

    pages = []
    token = ""
    while True:
        page = client.list_runs_page(integration=name, page_size=2, page_token=token)
        pages.append([r.run_id for r in page.runs])
        token = page.next_page_token
        if not token:
            break
    assert all(len(p) <= 2 for p in pages) and len(pages) >= 3, pages
    listed = [run_id for p in pages for run_id in p]
    assert listed == [failed, *reversed(started)]
    assert [r.run_id for r in client.list_runs(integration=name, page_size=2)] == listed

    only_failed = list(client.list_runs(integration=name, status="failed"))
    assert [r.run_id for r in only_failed] == [failed]
    assert [
        r.run_id for r in client.list_runs(integration=name, status=v1.RUN_STATUS_SUCCEEDED)
    ] == listed[1:]
    assert [r.trigger for r in only_failed] == ["api"]

    # The failed run again: a new run that says what it reruns.
    rerun = client.rerun(failed)
    assert (rerun.rerun_of, rerun.from_step) == (failed, "echo")
    assert client.wait(rerun.run_id).status == v1.RUN_STATUS_FAILED
    with pytest.raises(IsoflowError) as refused:
        client.rerun(started[0])
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION

    # What the failed step was given.
    assert client.step_input(failed, "echo") == {"fail": True}

    # Fixed as version 2, the failed run resumes with it.
    fixed = echo(name).replace("version: 1", "version: 2").replace(
        '        if (input && input.fail) throw new Error("asked to fail");\n', ""
    )
    client.deploy(fixed, file_name=f"{name}.yaml")
    resumed = client.rerun(failed, version=2)
    assert (resumed.rerun_of, resumed.version, resumed.from_version) == (failed, 2, 1)
    assert client.wait(resumed.run_id).status == v1.RUN_STATUS_SUCCEEDED
    with pytest.raises(IsoflowError) as missing:
        client.rerun(failed, version=7)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


def test_a_slow_run_is_cancelled(client: isoflow.Client, held: Held) -> None:
    name = unique("slow")
    client.deploy(
        f"apiVersion: isoflow.dev/v1\nname: {name}\nversion: 1\nsteps:\n"
        '  - id: hold\n    type: http\n    url: "{{ input.base }}/hold"\n    timeout: 10m\n',
        file_name=f"{name}.yaml",
    )
    run = client.start(name, {"base": held.url})
    assert held.wait_for(1), "the run's request never came"
    # In flight (an all node may still say pending until a checkpoint).
    assert client.get_run(run.run_id).status in (v1.RUN_STATUS_PENDING, v1.RUN_STATUS_RUNNING)
    client.cancel(run.run_id)
    ended = client.wait(run.run_id, timeout=LONG)
    assert ended.status == v1.RUN_STATUS_CANCELLED, ended.error
    with pytest.raises(IsoflowError) as again:
        client.cancel(run.run_id)
    assert again.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert [r.run_id for r in client.list_runs(integration=name, status="cancelled")] == [
        run.run_id
    ]


def test_credentials_are_stored_listed_rotated_and_deleted_without_secrets(
    client: isoflow.Client,
) -> None:
    # A node without a vault key refuses to store one, saying so.
    with pytest.raises(IsoflowError) as caught:
        client.set_credential("erp-api", bearer="t0ken", origins=["https://erp.example.com"])
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION, caught.value
    with pytest.raises(ValueError):
        client.set_credential("erp-api", origins=["https://erp.example.com"])


def test_a_tls_node_is_reached_with_its_ca_and_the_token(secured_node: SecuredNode) -> None:
    with isoflow.Client(secured_node.address, token=TOKEN, ca_file=secured_node.ca) as client:
        name = unique("tls")
        client.deploy(echo(name), file_name=f"{name}.yaml")
        result = client.execute(name, {"over": "tls"})
        assert result.succeeded and result.run.tenant == "acme"
        assert result.output == {"hello": "world", "input": {"over": "tls"}}

        # Credentials with a vault key: stored, listed and rotated without
        # their secrets, deleted.
        info = client.set_credential(
            "erp-api", basic=("svc", "pa55word"), origins=["https://erp.example.com"]
        )
        assert (info.kind, info.detail, info.version) == ("basic", "svc", 1)
        assert client.rotate_credential("erp-api", "n3w-pa55").version == 2
        listed = client.credentials()
        assert [(c.name, c.version) for c in listed] == [("erp-api", 2)]
        assert "pa55" not in str(listed)
        assert client.delete_credential("erp-api") is True
        assert client.delete_credential("erp-api") is False

    # The system's roots do not know the test's CA: the handshake fails.
    with isoflow.Client(secured_node.address, token=TOKEN, retries=0) as untrusting:
        with pytest.raises(IsoflowError) as caught:
            untrusting.integrations()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(caught.value).startswith(f"cannot connect to {secured_node.address}")

    # Plain HTTP/2 to a TLS listener gets nothing either.
    plain = secured_node.address.replace("https://", "http://")
    with isoflow.Client(plain, token=TOKEN, retries=0) as cleartext:
        with pytest.raises(IsoflowError) as caught:
            cleartext.integrations()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_wrong_token_is_refused(secured_node: SecuredNode) -> None:
    for token in ["not-the-token", None]:
        with isoflow.Client(secured_node.address, token=token, ca_file=secured_node.ca) as client:
            with pytest.raises(IsoflowError) as caught:
                client.integrations()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED, (token, caught.value)
        assert str(caught.value)


def test_the_admin_api_makes_a_tenant_whose_token_works_until_revoked(
    secured_node: SecuredNode,
) -> None:
    tenant = unique("globex")
    with isoflow.AdminClient(
        secured_node.address, token=ADMIN_TOKEN, ca_file=secured_node.ca
    ) as admin:
        created = admin.create_tenant(tenant, v1.TenantQuotas(runs_in_flight=2))
        assert (created.name, created.quotas.runs_in_flight) == (tenant, 2)
        issued = admin.issue_token(tenant, "python test")
        assert issued.token and issued.info.tenant == tenant
        assert tenant in [t.name for t in admin.tenants()]
        assert [t.label for t in admin.tokens(tenant)] == ["python test"]
        with isoflow.Client(secured_node.address, issued.token, secured_node.ca) as client:
            name = unique("theirs")
            client.deploy(echo(name), file_name=f"{name}.yaml")
            assert client.execute(name, {}).run.tenant == tenant
            assert admin.set_disabled(tenant, True).disabled
            with pytest.raises(IsoflowError) as disabled:
                client.integrations()
            assert disabled.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert not admin.set_disabled(tenant, False).disabled
            assert [i.name for i in client.integrations()] == [name]
            admin.revoke_token(issued.info.token_id)
            with pytest.raises(IsoflowError) as revoked:
                client.integrations()
            assert revoked.value.code == grpc.StatusCode.UNAUTHENTICATED
    # A tenant's token is not an admin token.
    with isoflow.AdminClient(secured_node.address, TOKEN, secured_node.ca) as not_admin:
        with pytest.raises(IsoflowError) as refused:
            not_admin.tenants()
    assert refused.value.code in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    ), refused.value


def test_a_deploy_is_retried_until_the_node_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on the port until the first pause, which starts the
    # node there: the deploy's second attempt finds it.
    port = free_port()
    nodes: list[Node] = []
    pauses: list[float] = []

    def node_comes_up(seconds: float) -> None:
        pauses.append(seconds)
        if not nodes:
            nodes.append(Node(tmp_path, port=port))
        time.sleep(seconds)

    monkeypatch.setattr(isoflow._retry, "_sleep", node_comes_up)
    name = unique("retried")
    try:
        with isoflow.Client(f"127.0.0.1:{port}", retries=4) as client:
            integration = client.deploy(echo(name), file_name=f"{name}.yaml")
            assert integration.created
            assert pauses, "the first attempt found the node already there"
    finally:
        for node in nodes:
            node.stop()


def test_calls_unsafe_to_repeat_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(isoflow._retry, "_sleep", pauses.append)
    with isoflow.Client(f"127.0.0.1:{free_port()}", retries=3) as client:
        for unsafe in [
            lambda: client.start("orders", {}),
            lambda: client.cancel("r-1"),
            lambda: client.execute("orders", {}),
        ]:
            with pytest.raises(IsoflowError) as caught:
                unsafe()
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert pauses == []
        # A read is retried, 3 times, and then says why in one sentence.
        with pytest.raises(IsoflowError) as caught:
            client.get_run("anything")
        assert len(pauses) == 3
        with pytest.raises(IsoflowError) as caught:
            list(client.watch("anything"))
        assert len(pauses) == 6
    assert "cannot connect to http://127.0.0.1:" in str(caught.value)
