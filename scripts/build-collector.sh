#!/usr/bin/env bash
# Build the otel-ml collector distribution `otelcol-ml` with the OpenTelemetry Collector Builder (OCB).
#
# Caching:
#   - Go module cache and Go build cache stay at Go's default locations (go env GOMODCACHE / GOCACHE),
#     so a second build only recompiles what changed.
#   - The finished binary is cached at
#       ${OTEL_ML_CACHE:-$HOME/.cache/otel-ml}/otelcol-ml-<sha256 of builder-config.yaml + this script>
#     and linked to .stack/bin/otelcol-ml. When that file exists, the build is skipped.
#
# Env knobs:
#   OTEL_ML_CACHE         cache directory (default $HOME/.cache/otel-ml)
#   OTEL_ML_FORCE_BUILD=1 rebuild even when the cached binary exists (still uses the Go caches)
#   OTEL_ML_MANIFEST      another builder manifest (default collector-config/builder-config.yaml)
#
# Prints the build time ("cold"/"warm" build, or "cached" when nothing had to be built).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/build-collector.sh"
CACHE="${OTEL_ML_CACHE:-$HOME/.cache/otel-ml}"
MANIFEST="${OTEL_ML_MANIFEST:-$ROOT/collector-config/builder-config.yaml}"
OCB_VERSION="v0.161.0"   # keep equal to the core release pinned in the manifest
OCB="$CACHE/tools/ocb-$OCB_VERSION"

log() { echo "[build-collector] $*" >&2; }

HASH="$(cat "$MANIFEST" "$SELF" | sha256sum | cut -d' ' -f1)"
BIN="$CACHE/otelcol-ml-$HASH"

link_bin() {
  mkdir -p "$ROOT/.stack/bin"
  ln -sfn "$BIN" "$ROOT/.stack/bin/otelcol-ml"
  log "binary: $BIN"
  log "linked: $ROOT/.stack/bin/otelcol-ml"
}

mkdir -p "$CACHE/tools" "$CACHE/build"

if [[ -x "$BIN" && "${OTEL_ML_FORCE_BUILD:-0}" != "1" ]]; then
  log "cached binary found, skipping build (0s)"
  link_bin
  exit 0
fi

# One build at a time per cache directory.
exec 9>"$CACHE/build-collector.lock"
flock 9
if [[ -x "$BIN" && "${OTEL_ML_FORCE_BUILD:-0}" != "1" ]]; then
  log "cached binary appeared while waiting for the lock"
  link_bin
  exit 0
fi

command -v go >/dev/null || { log "ERROR: go is not on PATH"; exit 1; }

start=$(date +%s)
# A build is "warm" when the Go build cache already has compiled collector packages.
kind="cold"
if [[ -d "$(go env GOMODCACHE)/go.opentelemetry.io/collector/receiver/otlpreceiver@${OCB_VERSION}" ]] \
   && [[ -n "$(ls -A "$(go env GOCACHE)" 2>/dev/null)" ]] \
   && ls "$CACHE"/otelcol-ml-* >/dev/null 2>&1; then
  kind="warm"
fi

if [[ ! -x "$OCB" ]]; then
  log "installing the collector builder $OCB_VERSION"
  tmpbin="$(mktemp -d)"
  GOBIN="$tmpbin" go install "go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION"
  mv "$tmpbin/builder" "$OCB"
  rmdir "$tmpbin"
fi

WORK="$CACHE/build/otelcol-ml-$HASH"
mkdir -p "$WORK"
# Same manifest, with the output path moved into the cache work directory.
sed -E "s#^([[:space:]]*output_path:).*#\1 $WORK/src#" "$MANIFEST" > "$WORK/manifest.yaml"

log "building otelcol-ml ($kind Go caches) in $WORK/src, this takes minutes on 2 cores"
"$OCB" --config "$WORK/manifest.yaml" > "$WORK/build.log" 2>&1 || {
  log "ERROR: builder failed; last lines of $WORK/build.log:"
  tail -n 40 "$WORK/build.log" >&2
  exit 1
}

cp "$WORK/src/otelcol-ml" "$BIN.tmp.$$"
mv -f "$BIN.tmp.$$" "$BIN"
end=$(date +%s)
log "$kind build took $((end - start))s"
echo "$((end - start))" > "$WORK/build-seconds-$kind"
link_bin
