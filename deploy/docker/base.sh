#!/usr/bin/env bash
# Makes the local Debian base image `localhost/debian-python:bookworm` from Debian's own packages (mmdebstrap +
# podman import) when it is missing. CI machines cannot pull from Docker Hub, so the Dockerfiles' public bases
# (python:3.11-slim, tensorflow/tensorflow) are replaced by this one through the BASE_IMAGE build argument.
# Made once per machine: a second call returns at once. Needs root (or sudo), mmdebstrap and podman.
#   deploy/docker/base.sh            # make it if missing
#   deploy/docker/base.sh --force    # make it again (a newer Debian point release)
set -euo pipefail
IMAGE="${MLCD_BASE_IMAGE:-localhost/debian-python:bookworm}"
SUITE="${MLCD_BASE_SUITE:-bookworm}"
podman_() { podman --cgroup-manager=cgroupfs "$@"; }
if [ "${1:-}" != "--force" ] && podman_ image exists "$IMAGE"; then
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# minbase + python3-venv: Debian's python3 has no pip; the Dockerfiles make a venv at /opt/venv with it.
# Debian's python3 is 3.11 on bookworm, the project's Python.
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$work/rootfs.tar"
podman_ import \
  --change 'CMD ["/bin/bash"]' \
  --change 'ENV LANG=C.UTF-8' \
  --message "mlcd CI base: Debian $SUITE minbase + python3 (mmdebstrap)" \
  "$work/rootfs.tar" "$IMAGE" >/dev/null
echo "made $IMAGE"
