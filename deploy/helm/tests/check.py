"""Assertions on the chart's rendered manifests, and the rendered node
configurations given to the real `isoflow` binary. Run by ../check.sh.

  check.py manifests <rendered.yaml> <values file or "default"> <dir for the TOML files>
  check.py node <isoflow binary> <isoflow.toml>...
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

import yaml


def fail(message):
    sys.exit(f"helm check: {message}")


def manifests(rendered, case, toml_dir):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    values = {} if case == "default" else (yaml.safe_load(open(case)) or {})
    name = os.path.basename(case)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    def one(kind, suffix):
        found = [d for n, d in by_kind.get(kind, {}).items() if n.endswith(suffix)]
        if len(found) != 1:
            fail(f"{name}: expected one {kind} named *{suffix}, found {len(found)}")
        return found[0]

    coordinator = one("StatefulSet", "-coordinator")
    worker = one("Deployment", "-worker")
    secrets = {n: d for n, d in by_kind.get("Secret", {}).items()}
    existing = set(existing_secrets(values))
    os.makedirs(toml_dir, exist_ok=True)
    etcd = values.get("etcd", {})
    bundled = etcd.get("bundled", {}).get("enabled", True)
    if bundled:
        svc = one("Service", "-etcd")["metadata"]["name"]
        expected_endpoints = [f"http://{svc}.isoflow.svc.cluster.local:2379"]
        one("StatefulSet", "-etcd")
    else:
        expected_endpoints = etcd["endpoints"]
        if any(n.endswith("-etcd") for n in by_kind.get("StatefulSet", {})):
            fail(f"{name}: bundled etcd rendered though disabled")

    for role, workload in (("coordinator", coordinator), ("worker", worker)):
        cm = one("ConfigMap", f"-{role}")
        text = cm["data"]["isoflow.toml"]
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            fail(f"{name}: the {role}'s isoflow.toml does not parse: {e}\n{text}")
        path = os.path.join(toml_dir, f"{role}.toml")
        with open(path, "w") as f:
            f.write(text)
        if config.get("role") != role:
            fail(f"{name}: the {role}'s isoflow.toml says role {config.get('role')!r}")
        if config.get("etcd", {}).get("endpoints") != expected_endpoints:
            fail(f"{name}: {role}'s etcd.endpoints {config.get('etcd', {}).get('endpoints')} != {expected_endpoints}")

        pod = workload["spec"]["template"]["spec"]
        [container] = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if int(config["http"]["listen"].rsplit(":", 1)[1]) != ports["http"]:
            fail(f"{name}: {role}'s http.listen is not its container's http port")
        if role == "coordinator":
            if int(config["api"]["listen"].rsplit(":", 1)[1]) != ports["grpc"]:
                fail(f"{name}: api.listen is not the container's grpc port")
            if "vault" in config and not config["vault"]["key"].get("env", "").startswith("ISOFLOW_"):
                fail(f"{name}: the vault key is not read from an ISOFLOW_ variable")
        else:
            for section in ("vault", "smtp", "api"):
                if section in config:
                    fail(f"{name}: the worker's isoflow.toml has [{section}], which a worker refuses or ignores")
            if config.get("sandbox", {}).get("namespaces") is not False:
                fail(f"{name}: sandbox.namespaces must be false under the chart's seccomp RuntimeDefault")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            http = container.get(probe, {}).get("httpGet")
            if http and http["port"] not in ports and http["port"] not in ports.values():
                fail(f"{name}: {role}'s {probe} uses port {http['port']}, which the container does not have")
        if container["args"] != ["serve", "--config", "/etc/isoflow/isoflow.toml"]:
            fail(f"{name}: {role}'s args")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        if "/etc/isoflow/isoflow.toml" not in mounts or "/tmp" not in mounts:
            fail(f"{name}: {role} lacks its config or /tmp mount")
        if role == "coordinator" and config.get("data_dir") not in mounts:
            fail(f"{name}: data_dir {config.get('data_dir')} is not a mounted volume")
        for key in ("cert", "key", "client_ca"):
            for section in (config.get("tls", {}), config.get("worker", {}).get("tls", {}), config.get("etcd", {})):
                if key in section and os.path.dirname(section[key]) not in mounts:
                    fail(f"{name}: {role}'s {section[key]} is on no mounted volume")
        sc, psc = container["securityContext"], pod["securityContext"]
        if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 10001 and sc.get("readOnlyRootFilesystem")
                and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("allowPrivilegeEscalation") is False
                and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
            fail(f"{name}: {role}'s security context is not the locked-down one")
        env = {e["name"]: e for e in container["env"]}
        needed = ["ISOFLOW_CLUSTER_TOKEN", "ISOFLOW_NODE_ID"]
        if role == "coordinator":
            needed += ["ISOFLOW_ADMIN_TOKEN", "ISOFLOW_ADVERTISE"]
            if "vault" in config:
                needed.append(config["vault"]["key"]["env"])
                needed += [p["env"] for p in config["vault"].get("previous", [])]
        for var in needed:
            if var not in env:
                fail(f"{name}: {role} lacks {var}")
        for var, e in env.items():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] in secrets and ref["key"] not in secrets[ref["name"]].get("data", {}):
                fail(f"{name}: {role}'s {var} reads key {ref['key']} that Secret {ref['name']} lacks")
            if ref and ref["name"] not in secrets and ref["name"] not in existing:
                fail(f"{name}: {role}'s {var} reads Secret {ref['name']}, which neither the chart makes nor the values name")
        # The pod's variables for the node check: plain values as rendered,
        # secrets as null (made up there).
        plain = {var: e["value"] for var, e in env.items() if "value" in e}
        secret = {var: None for var, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
        with open(os.path.join(toml_dir, f"{role}.env.json"), "w") as f:
            json.dump(plain | secret, f)

    for s in secrets.values():
        for k, v in s.get("data", {}).items():
            if len(base64.b64decode(v)) < 16:
                fail(f"{name}: Secret key {k} is shorter than 16 bytes")

    standby = values.get("coordinator", {}).get("standby", {}).get("enabled", False)
    replicas = coordinator["spec"]["replicas"]
    if replicas != (2 if standby else 1):
        fail(f"{name}: coordinator replicas {replicas}")
    if standby:
        if coordinator["spec"].get("updateStrategy", {}).get("type") != "OnDelete":
            fail(f"{name}: a standby pair must update OnDelete")
        if "volumeClaimTemplates" in coordinator["spec"]:
            fail(f"{name}: a standby with a claim template of its own would open an empty store")
        claims = {v["persistentVolumeClaim"]["claimName"] for v in coordinator["spec"]["template"]["spec"]["volumes"]
                  if "persistentVolumeClaim" in v}
        if len(claims) != 1:
            fail(f"{name}: standby coordinators must share one claim, found {claims}")
    hpa = by_kind.get("HorizontalPodAutoscaler", {})
    if values.get("workers", {}).get("autoscaling", {}).get("enabled"):
        [h] = hpa.values()
        if h["spec"]["metrics"][0]["external"]["metric"]["name"] != "isoflow_queue_depth":
            fail(f"{name}: the HPA's metric")
        if "replicas" in worker["spec"]:
            fail(f"{name}: the Deployment sets replicas beside an HPA")
    elif hpa:
        fail(f"{name}: an HPA though autoscaling is off")


def existing_secrets(values):
    """Every existingSecret the values name."""
    if isinstance(values, dict):
        for k, v in values.items():
            if k == "existingSecret" and v:
                yield v
            else:
                yield from existing_secrets(v)
    elif isinstance(values, list):
        for v in values:
            yield from existing_secrets(v)


PEM_DIRS = ("tls", "etcd-tls")


def node(binary, tomls):
    """Each rendered configuration must get the real node as far as dialling
    etcd (it waits for an etcd it cannot reach: the line below); a misspelt
    key must be refused."""
    work = tempfile.mkdtemp(prefix="isoflow-helm-")
    try:
        etc = os.path.join(work, "etc")
        for d in PEM_DIRS:
            os.makedirs(os.path.join(etc, d))
        cert = os.path.join(etc, "tls", "tls.crt")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=isoflow-helm-check",
                        "-keyout", os.path.join(etc, "tls", "tls.key"), "-out", cert],
                       check=True, capture_output=True)
        shutil.copy(cert, os.path.join(etc, "tls", "ca.crt"))
        for f in ("tls.crt", "tls.key", "ca.crt"):
            shutil.copy(os.path.join(etc, "tls", f), os.path.join(etc, "etcd-tls", f))
        for toml in tomls:
            text = open(toml).read().replace("/etc/isoflow/", etc + "/").replace("/var/lib/isoflow", work + "/data")
            local = os.path.join(work, os.path.basename(os.path.dirname(toml)) + "-" + os.path.basename(toml))
            open(local, "w").write(text)
            accepted(binary, local, json.load(open(toml[: -len(".toml")] + ".env.json")), work)
        misspelt = os.path.join(work, "misspelt.toml")
        open(misspelt, "w").write(open(local).read().replace("[etcd]", "[etcd]\nlease_tll = \"3s\"", 1))
        code, log = start(binary, misspelt, {}, work)
        if code is None or "unknown field `lease_tll`" not in log:
            fail(f"the node did not refuse a misspelt key (exit {code}):\n{log}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def pod_env(rendered):
    """The variables a pod gets: $(POD_NAME) filled in, made-up secrets."""
    out = {}
    for i, (name, value) in enumerate(rendered.items()):
        if value is not None:
            out[name] = value.replace("$(POD_NAME)", "isoflow-0")
        elif name.startswith("ISOFLOW_VAULT_"):
            out[name] = base64.b64encode(os.urandom(32)).decode()
        elif name == "ISOFLOW_API_TOKENS":
            out[name] = "acme=acme-token-0123456789abcdef"
        else:
            out[name] = f"{name.lower()}-{i}-0123456789abcdef"
    return out


def start(binary, config, rendered_env, work):
    """Runs `isoflow serve` with a pod's variables; returns (None, log) once
    it dials etcd, or (exit code, log) if it stops first."""
    env = {"PATH": os.environ["PATH"], "HOME": work} | pod_env(rendered_env)
    log_path = os.path.join(work, "node.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([binary, "serve", "--config", config], env=env, stdout=log, stderr=log,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            text = open(log_path).read()
            if "cannot reach etcd yet" in text:
                return None, text
            if proc.poll() is not None:
                return proc.returncode, open(log_path).read()
            time.sleep(0.1)
        fail(f"the node neither dialled etcd nor stopped in 60 s with {config}:\n{open(log_path).read()}")
    finally:
        if proc.poll() is None:
            # It waits for etcd without heeding SIGTERM: end its session.
            os.killpg(proc.pid, 9)
            proc.wait()


def accepted(binary, config, rendered_env, work):
    code, log = start(binary, config, rendered_env, work)
    if code is not None:
        fail(f"the node refused the rendered {os.path.basename(config)} (exit {code}):\n{log}\n{open(config).read()}")
    if re.search(r"Z +ERROR ", log):
        fail(f"the node logged an error with {os.path.basename(config)}:\n{log}")


if __name__ == "__main__":
    if sys.argv[1] == "manifests":
        manifests(*sys.argv[2:5])
    elif sys.argv[1] == "node":
        node(sys.argv[2], sys.argv[3:])
    else:
        fail(f"unknown command {sys.argv[1]}")
