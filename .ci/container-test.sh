#!/usr/bin/env bash
# The container image, built and run: builds the static binary and the FROM-scratch image with
# docker/build-image.sh (no registry, no pull), then checks it against running containers with
# .ci/container_test.py (HTTPS /apply golden case and /v1/score, UID 1001 on a read-only root,
# the certificate and fitted models kept in the volume, two containers on one volume, draining
# on `docker stop`, a 100,000-row request under a memory limit; image size and memory printed).
# Needs a Docker Engine; removes every container, volume and image it made.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker >/dev/null 2>&1; then
  echo "container-test: the docker command is missing: the container image cannot be built or run here" >&2
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  echo "container-test: no Docker Engine answers (\`docker info\` fails): start the daemon (dockerd) first" >&2
  docker info 2>&1 | tail -n 3 >&2 || true
  exit 1
fi

tag=dnsexfil-ci:$$
trap 'docker image rm -f "$tag" >/dev/null 2>&1 || true' EXIT
start=$(date +%s)
bash docker/build-image.sh "$tag"
echo "container-test: image built in $(( $(date +%s) - start )) s"
python3 .ci/container_test.py "$tag"
