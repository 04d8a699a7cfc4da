#!/usr/bin/env bash
# Builds the container image from a binary built on this machine, pulling nothing: a static
# release binary (the C library linked in), then docker/Dockerfile.runtime (FROM scratch) over a
# build context holding just that binary and the image's empty folders.
#
#   docker/build-image.sh [TAG]        default tag: dnsexfil:<version in Cargo.toml>
#
# Needs the Rust toolchain, the C library's static archive (Debian: libc6-dev) and Docker.
# Prints the image's tag and size. CI builds the image it tests with this script.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\([^"]*\)"/\1/p' Cargo.toml | head -n 1)
tag=${1:-dnsexfil:$version}
target=$(rustc -vV | sed -n 's/^host: //p')

# With an explicit --target, RUSTFLAGS apply to the binary only (not to build scripts and
# proc-macros, which must stay dynamic); target/<triple>/ keeps this build apart from the
# ordinary one.
echo "build-image: static release binary for $target"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --release --locked --target "$target"
bin=target/$target/release/dnsexfil

# Statically linked: the scratch image has no dynamic loader and no libraries.
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
  echo "build-image: $bin asks for a dynamic loader; the image needs a static binary" >&2
  exit 1
fi
if command -v file >/dev/null 2>&1; then file "$bin"; fi

context=target/image-context
rm -rf "$context"
mkdir -p "$context/root/usr/local/bin" "$context/root/tmp" \
  "$context/data/srv/app/model/data" "$context/data/srv/notebooks/data"
chmod 1777 "$context/root/tmp"
chmod -R 0775 "$context/data/srv"
cp "$bin" "$context/root/usr/local/bin/dnsexfil"
cp docker/Dockerfile.runtime "$context/Dockerfile"

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
echo "build-image: docker build $tag"
docker build --quiet --build-arg "VERSION=$version" --build-arg "REVISION=$revision" -t "$tag" "$context" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "build-image: $tag, $((size / 1024 / 1024)) MiB ($size bytes)"
