#!/usr/bin/env bash
# Build/install the local backends of the otel-ml stack and link them into .stack/bin/:
#   - Jaeger v2 (module github.com/jaegertracing/jaeger, tag v1.76.0 = the v2.13 code; the v2 tags
#     cannot be fetched as a module because the module path has no /v2). Built from Go modules in a
#     scratch module under the cache dir with `go get -tool`, then `go build`. The binary is cached at
#       ${OTEL_ML_CACHE:-$HOME/.cache/otel-ml}/jaeger-<sha256 of version + this script>
#     Without the UI assets it serves a placeholder page; the query API (/api/services,
#     /api/traces?service=..., /api/traces/{id}) works.
#   - Prometheus 2.x and promtool from Debian's `prometheus` package (apt). The package's system
#     service is stopped and disabled so that nothing else listens on 9090.
#
# Usage: scripts/build-backends.sh [jaeger|prometheus|all]   (default all)
# Env:   OTEL_ML_CACHE, OTEL_ML_FORCE_BUILD=1 (rebuild Jaeger even when cached)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/build-backends.sh"
CACHE="${OTEL_ML_CACHE:-$HOME/.cache/otel-ml}"
JAEGER_VERSION="v1.76.0"
BIN_DIR="$ROOT/.stack/bin"
WHAT="${1:-all}"

log() { echo "[build-backends] $*" >&2; }
mkdir -p "$CACHE" "$BIN_DIR"

build_jaeger() {
  local hash bin work start end kind
  hash="$( { echo "$JAEGER_VERSION"; go version; cat "$SELF"; } | sha256sum | cut -d' ' -f1)"
  bin="$CACHE/jaeger-$hash"
  if [[ -x "$bin" && "${OTEL_ML_FORCE_BUILD:-0}" != "1" ]]; then
    log "jaeger: cached binary found, skipping build (0s)"
  else
    exec 8>"$CACHE/build-jaeger.lock"
    flock 8
    if [[ ! -x "$bin" || "${OTEL_ML_FORCE_BUILD:-0}" == "1" ]]; then
      command -v go >/dev/null || { log "ERROR: go is not on PATH"; exit 1; }
      work="$CACHE/build/jaeger-$JAEGER_VERSION"
      kind="cold"
      [[ -f "$work/go.sum" ]] && kind="warm"
      mkdir -p "$work"
      start=$(date +%s)
      log "jaeger: building $JAEGER_VERSION ($kind) in $work, this takes minutes on 2 cores"
      (
        cd "$work"
        [[ -f go.mod ]] || go mod init otel-ml.local/jaeger-build >/dev/null 2>&1
        go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION"
        go build -trimpath -ldflags="-s -w" -o "$bin.tmp.$$" github.com/jaegertracing/jaeger/cmd/jaeger
        mv -f "$bin.tmp.$$" "$bin"
      ) > "$work/build.log" 2>&1 || {
        log "ERROR: jaeger build failed; last lines of $work/build.log:"
        tail -n 40 "$work/build.log" >&2
        exit 1
      }
      end=$(date +%s)
      log "jaeger: $kind build took $((end - start))s"
      echo "$((end - start))" > "$work/build-seconds-$kind"
    fi
    flock -u 8
  fi
  ln -sfn "$bin" "$BIN_DIR/jaeger"
  log "jaeger: linked $BIN_DIR/jaeger -> $bin"
}

install_prometheus() {
  local start end
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    start=$(date +%s)
    log "prometheus: installing Debian package prometheus"
    export DEBIAN_FRONTEND=noninteractive
    # Do not let the package's maintainer scripts start the system service (it would take :9090).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" && -w /usr/sbin ]]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
    fi
    if ! apt-get install -y --no-install-recommends prometheus >/tmp/otel-ml-apt.log 2>&1; then
      apt-get update >>/tmp/otel-ml-apt.log 2>&1 || true
      apt-get install -y --no-install-recommends prometheus >>/tmp/otel-ml-apt.log 2>&1 || {
        [[ $created_policy == 1 ]] && rm -f "$policy"
        log "ERROR: apt-get install prometheus failed:"; tail -n 30 /tmp/otel-ml-apt.log >&2; exit 1; }
    fi
    [[ $created_policy == 1 ]] && rm -f "$policy"
    end=$(date +%s)
    log "prometheus: installed in $((end - start))s"
  fi
  # Make sure no system-wide Prometheus keeps running on :9090.
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  if command -v service >/dev/null; then service prometheus stop >/dev/null 2>&1 || true; fi
  if [[ -f /run/prometheus.pid ]]; then kill "$(cat /run/prometheus.pid)" 2>/dev/null || true; fi
  ln -sfn "$(command -v prometheus)" "$BIN_DIR/prometheus"
  ln -sfn "$(command -v promtool)" "$BIN_DIR/promtool"
  log "prometheus: $("$BIN_DIR/prometheus" --version 2>&1 | head -1)"
}

case "$WHAT" in
  jaeger) build_jaeger ;;
  prometheus) install_prometheus ;;
  all) install_prometheus; build_jaeger ;;
  *) echo "usage: $0 [jaeger|prometheus|all]" >&2; exit 2 ;;
esac
