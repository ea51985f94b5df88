#!/usr/bin/env bash
# Print the base image to build HemaFed's images on, making sure it exists:
#  - BASE_IMAGE set by the user: used as is (pulled by docker build when needed);
#  - python:3.11-slim when it is present or can be pulled (an ordinary Docker host);
#  - else a local Debian bookworm base built with debootstrap (no registry reachable).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"; exit 0; fi
if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 120 docker pull -q python:3.11-slim >/dev/null 2>&1; then
  echo python:3.11-slim; exit 0
fi
echo "[base-image] no registry reachable: building the local base image hemafed-base:bookworm" >&2
"$here/../images/base/build-base-image.sh" hemafed-base:bookworm >&2
echo hemafed-base:bookworm
