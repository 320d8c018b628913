"""Deploys an integration, starts it, follows it, prints its output.

    python follow.py --server https://isoflow.internal:7700 --token T --ca ca.pem \\
        --definition flows/orders.yaml --input '{"export_url": "https://shop/export"}'

``--server``, ``--token`` and ``--ca`` default to ``ISOFLOW_SERVER``,
``ISOFLOW_TOKEN`` and ``ISOFLOW_CA``, as for isoflowctl. Each step and log
line is printed as it comes; the last lines are ``run <id> SUCCEEDED`` and
the output as one line of JSON. Exit 0 when the run succeeded; 1 with the
run's error when it did not, or with the error's sentence when a call
failed (``error: ...`` on stderr; a refused definition's problems one a
line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

# grpc's core logs a failed TLS handshake at info level on stderr, before
# the error says the same in one sentence; a user may still ask for more.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

try:
    import isoflow
except ImportError:  # run from a checkout, the package not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import isoflow

from isoflow import v1


def main() -> int:
    parser = argparse.ArgumentParser(description="Deploy, start and follow an integration.")
    parser.add_argument(
        "--server", default=os.environ.get("ISOFLOW_SERVER", "http://127.0.0.1:7700")
    )
    parser.add_argument("--token", default=os.environ.get("ISOFLOW_TOKEN"))
    parser.add_argument(
        "--ca", default=os.environ.get("ISOFLOW_CA"), help="the CA (PEM) of an https:// server"
    )
    parser.add_argument("--definition", required=True, type=Path, help="the integration's file")
    parser.add_argument("--input", default="null", help="the run's input: JSON, or @file")
    args = parser.parse_args()
    try:
        payload = (
            Path(args.input[1:]).read_bytes() if args.input.startswith("@") else args.input.encode()
        )
        with isoflow.Client(args.server, token=args.token, ca_file=args.ca) as client:
            return follow(client, args.definition, payload)
    except (isoflow.IsoflowError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def follow(client: isoflow.Client, definition: Path, payload: bytes) -> int:
    integration = client.deploy(definition)
    print(f"deployed {integration.name} version {integration.version}", flush=True)
    # A request id makes the start safe to retry if the server is unavailable.
    run = client.start(
        integration.name, payload, version=integration.version, request_id=str(uuid.uuid4())
    )
    print(f"run {run.run_id} started", flush=True)
    ended = None
    for update in client.watch(run.run_id, logs=True):
        if isinstance(update, v1.LogLine):
            level = v1.LogLevel.Name(update.level).removeprefix("LOG_LEVEL_").lower()
            print(f"  {update.step_key}: [{level}] {update.message}", flush=True)
        elif isinstance(update, v1.Step):
            status = v1.StepStatus.Name(update.status).removeprefix("STEP_STATUS_").lower()
            took = update.end_time.ToMilliseconds() - update.start_time.ToMilliseconds()
            print(
                f"  step {update.step_key} {status} ({update.attempts} attempt(s), {took} ms)",
                flush=True,
            )
        else:
            ended = update
    if ended is None:
        raise isoflow.IsoflowError(f"the updates of run {run.run_id} ended before the run did")
    status = isoflow.status_name(ended.status)
    if ended.status != v1.RUN_STATUS_SUCCEEDED:
        print(
            f"run {ended.run_id} {status}: {ended.error}"
            if ended.error
            else f"run {ended.run_id} {status}"
        )
        return 1
    print(f"run {ended.run_id} {status}")
    print(json.dumps(client.output(ended.run_id)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
