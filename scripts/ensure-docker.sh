#!/usr/bin/env bash
# Make sure a Docker engine and a compose tool are available.
# On a Debian host without Docker (CI here), install docker.io, docker-compose and
# debootstrap from Debian and start dockerd in the background. Waits on `docker info`
# with bounded retries; never a blind sleep.
set -euo pipefail

log() { printf '[ensure-docker] %s\n' "$*" >&2; }

if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      log "no Docker engine found and cannot install one (need root on Debian/Ubuntu); install Docker first"
      exit 1
    fi
    log "installing docker.io, docker-compose and debootstrap from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q docker.io docker-compose debootstrap >/dev/null
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd in the background (log: /tmp/dockerd.log)"
    nohup dockerd >/tmp/dockerd.log 2>&1 &
  fi
  for i in $(seq 1 60); do  # bounded retry: up to ~60 s for the engine to answer
    if docker info >/dev/null 2>&1; then break; fi
    if [ "$i" = 60 ]; then log "dockerd did not come up; see /tmp/dockerd.log"; exit 1; fi
    sleep 1
  done
fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing docker-compose from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null
  else
    log "neither 'docker compose' nor 'docker-compose' found"; exit 1
  fi
fi
log "docker engine ready: $(docker info --format '{{.ServerVersion}}')"
