#!/usr/bin/env bash
# Builds mlcd's images with podman (CI, and any machine without Docker Hub: the base is made locally by base.sh).
#   deploy/docker/build.sh                 # gateway, trainer, airflow
#   deploy/docker/build.sh gateway trainer # only these
# Environment:
#   MLCD_IMAGE_TAG    tag of the built images (default: 0.1.0); names are ghcr.io/mlcd/<role>:<tag>
#   MLCD_BASE_IMAGE   base of all three (default: localhost/debian-python:bookworm, made by base.sh if missing);
#                     set it to "public" to build on the Dockerfiles' own defaults (python:3.11-slim, tensorflow/…)
#   MLCD_WHEELHOUSE   host folder of wheels mounted into every build (default: ~/.cache/mlcd/wheels): each wheel,
#                     the TensorFlow one above all, is downloaded once per machine, not once per image or CI run
# Prints one line per image: role, image, seconds, size in bytes. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
roles=("$@")
[ ${#roles[@]} -gt 0 ] || roles=(gateway trainer airflow)
tag="${MLCD_IMAGE_TAG:-0.1.0}"
base="${MLCD_BASE_IMAGE:-localhost/debian-python:bookworm}"
wheels="${MLCD_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlcd/wheels}"
mkdir -p "$wheels"
podman_() { podman --cgroup-manager=cgroupfs "$@"; }
base_args=()
if [ "$base" != "public" ]; then
  if [ "$base" = "localhost/debian-python:bookworm" ]; then
    MLCD_BASE_IMAGE="$base" deploy/docker/base.sh
  fi
  base_args=(--build-arg "BASE_IMAGE=$base")
fi
# The machine's CA bundle: builds reach the package registries through its TLS proxy (pip reads PIP_CERT).
tls_args=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  tls_args=(-v /etc/ssl/certs:/etc/ssl/certs:ro --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi
revision="$(git describe --always --dirty 2>/dev/null || echo unknown)"
for role in "${roles[@]}"; do
  file="deploy/docker/Dockerfile.$role"
  [ -f "$file" ] || { echo "build.sh: no $file (roles: gateway, trainer, airflow)" >&2; exit 2; }
  image="ghcr.io/mlcd/$role:$tag"
  start=$(date +%s)
  # --runtime runc, the ulimits and --network host: what podman needs on these machines; --format docker keeps
  # the HEALTHCHECK (the OCI image format has none). A wheelhouse, not pip's cache: buildah 1.28 keeps no
  # `--mount=type=cache` between builds, and this machine's proxy strips the headers pip's HTTP cache needs.
  podman_ build --runtime runc --network host --format docker \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    "${tls_args[@]}" "${base_args[@]}" \
    -v "$wheels:/wheels:rw" --build-arg WHEELHOUSE=/wheels \
    --build-arg "MLCD_CODE_VERSION=$revision" \
    --layers -f "$file" -t "$image" . >&2
  size=$(podman_ image inspect --format '{{.Size}}' "$image")
  echo "$role $image $(( $(date +%s) - start ))s $size"
done
