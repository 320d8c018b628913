"""examples/follow.py as a user runs it: against a TLS node, with a token
and the CA, from a definition file with its code beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import LONG, PYTHON_ROOT, TOKEN, SecuredNode

FOLLOW = PYTHON_ROOT / "examples" / "follow.py"


def follow(
    node: SecuredNode, definition: Path, input_json: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FOLLOW), "--server", node.address, "--token", TOKEN,
         "--ca", str(node.ca), "--definition", str(definition), "--input", input_json],
        capture_output=True, text=True, timeout=LONG,
    )  # fmt: skip


def test_follow_prints_the_steps_logs_and_output(secured_node: SecuredNode, tmp_path: Path) -> None:
    (tmp_path / "greet.js").write_text(
        "export default function (input) {\n"
        "  console.log(`greeting ${input.who}`);\n"
        "  if (input.who === 'nobody') throw new Error('nobody to greet');\n"
        "  return { greeting: `hello ${input.who}` };\n"
        "}\n"
    )
    definition = tmp_path / "greet.yaml"
    definition.write_text(
        "apiVersion: isoflow.dev/v1\nname: follow-greet\nversion: 1\nsteps:\n"
        "  - id: greet\n    type: code\n    file: greet.js\n"
    )
    done = follow(secured_node, definition, '{"who": "world"}')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "deployed follow-greet version 1"
    assert "  greet: [info] greeting world" in lines
    assert any(line.startswith("  step greet succeeded") for line in lines), lines
    run_id = lines[1].split()[1]
    assert lines[-2] == f"run {run_id} SUCCEEDED"
    assert json.loads(lines[-1]) == {"greeting": "hello world"}

    failed = follow(secured_node, definition, '{"who": "nobody"}')
    assert failed.returncode == 1
    assert "FAILED: " in failed.stdout.splitlines()[-1] and "nobody to greet" in failed.stdout


def test_follow_says_why_in_one_sentence(secured_node: SecuredNode, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "apiVersion: isoflow.dev/v1\nname: broken\nversion: 1\nsteps:\n"
        "  - id: post\n    type: htp\n"
    )
    refused = follow(secured_node, broken, "{}")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f'error: {broken}:6: step "post": unknown step type "htp"')
    assert len(refused.stderr.splitlines()) == 1, refused.stderr

    # A client without the CA does not trust the node: one sentence too.
    untrusting = subprocess.run(
        [sys.executable, str(FOLLOW), "--server", secured_node.address, "--token", TOKEN,
         "--definition", str(broken)],
        capture_output=True, text=True, timeout=LONG,
    )  # fmt: skip
    assert untrusting.returncode == 1
    assert untrusting.stderr.startswith(f"error: cannot connect to {secured_node.address}")
    assert len(untrusting.stderr.splitlines()) == 1, untrusting.stderr

    missing = follow(secured_node, tmp_path / "missing.yaml", "{}")
    assert missing.returncode == 1 and "missing.yaml" in missing.stderr
    assert "Traceback" not in missing.stderr
