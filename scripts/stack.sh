#!/usr/bin/env bash
# The local otel-ml telemetry stack, all on loopback:
#
#   app --OTLP--> agent (4317/4318) --OTLP--> gateway (4417/4418) --OTLP--> Jaeger (4517/4518, API 16686)
#                                                                 --remote write--> Prometheus (9090)
#                                                                 --file--> .stack/gateway/logs*.jsonl
#                                                                 --OTLP (ML metrics, ML records)--> processor tier:
#   processor-lb (4817/4818, collector-config/processor/processor-lb.yaml) --load_balancing by ml.model.name-->
#     processor-a (4717/4718) and processor-b (4727/4728) (python -m otel_ml.processor, stores under .stack/)
#     --OTLP derived ml.fleet.* metrics--> processor-lb (4819) --remote write--> Prometheus
#
# Usage:
#   scripts/stack.sh start [COMPONENT...]    build what is missing, start (idempotent), wait for health
#   scripts/stack.sh stop [COMPONENT...]     stop (TERM, then KILL after 10 s) and remove pid files
#   scripts/stack.sh restart [COMPONENT...]
#   scripts/stack.sh status                  one line per component; exit 1 if one is not healthy
#   scripts/stack.sh logs COMPONENT          tail of the component's log
#   scripts/stack.sh run-collector NAME CONFIG [HEALTH_URL]
#                                            start otelcol-ml with any config as component NAME
#                                            (pid/log under .stack/), wait until it is ready
#   scripts/stack.sh stop-collector NAME     same as `stop NAME`
# COMPONENTS: prometheus jaeger processor-a processor-b processor-lb gateway agent (started in that
# order, stopped in reverse: what sends stops first, so every queue drains into a running next hop).
#
# Files: .stack/bin/ (binaries), .stack/pids/NAME.pid, .stack/logs/NAME.log, .stack/prometheus/data,
#        .stack/gateway/logs.jsonl and logs-business-unit.jsonl (log records written by the gateway),
#        .stack/processor-a/processor.db, .stack/processor-b/processor.db (the processors' stores).
#
# Env knobs:
#   OTEL_ML_AGENT_CONFIG       default collector-config/agent.yaml
#   OTEL_ML_GATEWAY_CONFIG     default collector-config/gateway.yaml (or any backends/*.yaml)
#   OTEL_ML_PROCESSOR_TIER_CONFIG  default collector-config/processor-tier.yaml, merged into the gateway's
#                              config (feeds the processor tier); "none" leaves it out
#   OTEL_ML_JAEGER_CONFIG      default collector-config/jaeger/jaeger.yaml
#   OTEL_ML_PROMETHEUS_CONFIG  default collector-config/prometheus/prometheus.yml
#   OTEL_ML_PROM_LOOKBACK      default 2m (--query.lookback-delta)
#   OTEL_ML_STACK_TIMEOUT      default 90 (seconds to wait for each component's health)
#   OTEL_ML_STACK_COMPONENTS   default "prometheus jaeger processor-a processor-b processor-lb gateway agent"
#   OTEL_ML_PROCESSOR_CONFIG   default collector-config/processor/processor.toml (both processors)
#   OTEL_ML_PROCESSOR_LB_CONFIG  default collector-config/processor/processor-lb.yaml
#   OTEL_ML_PYTHON             interpreter of the processors (default: PYTHON, else python3; needs
#                              otel-ml with its processor extra installed)
#   The processors run with OTEL_ML_PROCESSOR_INSTANCE_ID=processor-a|b (stable across restarts) and,
#   unless set in the environment, OTEL_ML_PROCESSOR_EXPORT_INTERVAL=5s, _COMPUTE_INTERVAL=2s and
#   _PERFORMANCE_INTERVAL=5s (fresh numbers in Prometheus within seconds; the file's defaults suit
#   production). Every other OTEL_ML_PROCESSOR_* variable reaches both (docs/processor.md).
#   OTEL_ML_SKIP_BUILD=1       do not call the build scripts (binaries must be in .stack/bin)
#   OTEL_ML_CACHE              build cache (see scripts/build-collector.sh)
#   Collector configs read more OTEL_ML_* variables: see their headers.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/.stack"
BIN="$STACK/bin"
PIDS="$STACK/pids"
LOGS="$STACK/logs"
TIMEOUT="${OTEL_ML_STACK_TIMEOUT:-90}"
ALL_COMPONENTS=(${OTEL_ML_STACK_COMPONENTS:-prometheus jaeger processor-a processor-b processor-lb gateway agent})

AGENT_CONFIG="${OTEL_ML_AGENT_CONFIG:-$ROOT/collector-config/agent.yaml}"
GATEWAY_CONFIG="${OTEL_ML_GATEWAY_CONFIG:-$ROOT/collector-config/gateway.yaml}"
PROCESSOR_TIER_CONFIG="${OTEL_ML_PROCESSOR_TIER_CONFIG:-$ROOT/collector-config/processor-tier.yaml}"
JAEGER_CONFIG="${OTEL_ML_JAEGER_CONFIG:-$ROOT/collector-config/jaeger/jaeger.yaml}"
PROMETHEUS_CONFIG="${OTEL_ML_PROMETHEUS_CONFIG:-$ROOT/collector-config/prometheus/prometheus.yml}"
PROCESSOR_CONFIG="${OTEL_ML_PROCESSOR_CONFIG:-$ROOT/collector-config/processor/processor.toml}"
PROCESSOR_LB_CONFIG="${OTEL_ML_PROCESSOR_LB_CONFIG:-$ROOT/collector-config/processor/processor-lb.yaml}"

# Files written by the gateway's file exporters (absolute, so the cwd does not matter).
export OTEL_ML_GATEWAY_LOGS_FILE="${OTEL_ML_GATEWAY_LOGS_FILE:-$STACK/gateway/logs.jsonl}"
export OTEL_ML_GATEWAY_BU_LOGS_FILE="${OTEL_ML_GATEWAY_BU_LOGS_FILE:-$STACK/gateway/logs-business-unit.jsonl}"

log() { echo "[stack] $*" >&2; }
die() { echo "[stack] ERROR: $*" >&2; exit 1; }

mkdir -p "$BIN" "$PIDS" "$LOGS" "$STACK/gateway" "$STACK/prometheus/data"

# The processors: OTLP gRPC / HTTP ports (HTTP also serves /health and /status) and their own stores.
processor_ports() { # NAME -> "GRPC HTTP"
  case "$1" in
    processor-a) echo "4717 4718" ;;
    processor-b) echo "4727 4728" ;;
    *) return 1 ;;
  esac
}

python_exe() { # the real interpreter (not a pyenv shim or wrapper script), so the pid checks match
  local py="${OTEL_ML_PYTHON:-${PYTHON:-python3}}"
  "$py" -c 'import sys; print(sys.executable)' 2>/dev/null || die "no Python interpreter '$py' (set OTEL_ML_PYTHON)"
}

health_url() {
  case "$1" in
    prometheus) echo "http://127.0.0.1:9090/-/ready" ;;
    jaeger) echo "http://127.0.0.1:16686/api/services" ;;
    gateway) echo "http://127.0.0.1:13134/" ;;
    agent) echo "http://127.0.0.1:13133/" ;;
    processor-lb) echo "http://127.0.0.1:13137/" ;;
    processor-a|processor-b) set -- $(processor_ports "$1"); echo "http://127.0.0.1:$2/health" ;;
    *) [[ -f "$PIDS/$1.health" ]] && cat "$PIDS/$1.health" || echo "" ;;
  esac
}

is_healthy() { # URL
  [[ -n "$1" ]] && curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
}

alive() { # PID: running and not a zombie
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  [[ -n "$st" && "$st" != Z* ]]
}

pid_of() { # NAME -> pid if the process from the pid file is alive (and still runs our binary)
  local f="$PIDS/$1.pid" pid want have
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" ]] && alive "$pid" || return 1
  if [[ -f "$PIDS/$1.exe" ]]; then  # guard against a recycled pid: same executable as launched
    want="$(cat "$PIDS/$1.exe")"
    have="$(readlink -f "/proc/$pid/exe" 2>/dev/null || true)"
    have="${have% (deleted)}"  # the file was replaced by a forced rebuild
    [[ -z "$want" || -z "$have" || "$want" == "$have" ]] || return 1
  fi
  echo "$pid"
}

ensure_built() {
  [[ "${OTEL_ML_SKIP_BUILD:-0}" == "1" ]] && return 0
  local need_collector=0 need_jaeger=0 need_prom=0 c
  for c in "$@"; do
    case "$c" in
      agent|gateway|processor-lb) need_collector=1 ;;
      jaeger) need_jaeger=1 ;;
      prometheus) need_prom=1 ;;
    esac
  done
  # The build scripts are cheap when everything is cached (they only re-link).
  [[ $need_collector == 1 ]] && "$ROOT/scripts/build-collector.sh"
  [[ $need_prom == 1 ]] && "$ROOT/scripts/build-backends.sh" prometheus
  [[ $need_jaeger == 1 ]] && "$ROOT/scripts/build-backends.sh" jaeger
  return 0
}

command_for() { # NAME -> prints the command (one arg per line)
  case "$1" in
    prometheus)
      printf '%s\n' "$BIN/prometheus" \
        "--config.file=$PROMETHEUS_CONFIG" \
        "--web.listen-address=127.0.0.1:9090" \
        "--web.enable-remote-write-receiver" \
        "--web.enable-lifecycle" \
        "--web.enable-admin-api" \
        "--storage.tsdb.path=$STACK/prometheus/data" \
        "--storage.tsdb.retention.time=1d" \
        "--query.lookback-delta=${OTEL_ML_PROM_LOOKBACK:-2m}" ;;
    jaeger) printf '%s\n' "$BIN/jaeger" "--config=$JAEGER_CONFIG" ;;
    gateway)
      printf '%s\n' "$BIN/otelcol-ml" "--config=$GATEWAY_CONFIG"
      [[ "$PROCESSOR_TIER_CONFIG" == none ]] || printf '%s\n' "--config=$PROCESSOR_TIER_CONFIG" ;;
    agent) printf '%s\n' "$BIN/otelcol-ml" "--config=$AGENT_CONFIG" ;;
    processor-lb) printf '%s\n' "$BIN/otelcol-ml" "--config=$PROCESSOR_LB_CONFIG" ;;
    processor-a|processor-b)
      printf '%s\n' "$(python_exe)" -m otel_ml.processor --config "$PROCESSOR_CONFIG" ;;
    *) die "unknown component '$1' (use run-collector NAME CONFIG for others)" ;;
  esac
}

fail_with_log() { # NAME MESSAGE
  echo "[stack] ERROR: $2" >&2
  echo "[stack] ---- last 40 lines of $LOGS/$1.log ----" >&2
  tail -n 40 "$LOGS/$1.log" >&2 2>/dev/null || true
  echo "[stack] ----" >&2
  exit 1
}

# launch NAME HEALTH_URL READY_PATTERN CMD...
launch() {
  local name="$1" url="$2" pattern="$3" pid deadline
  shift 3
  if pid="$(pid_of "$name")"; then
    if [[ -z "$url" ]] || is_healthy "$url"; then
      log "$name already running (pid $pid)"
      if [[ "$(readlink -f "$1")" != "$(cat "$PIDS/$name.exe" 2>/dev/null)" ]]; then
        log "WARNING: $name runs an older build of $1; '$0 restart $name' picks up the new one"
      fi
      return 0
    fi
    log "$name running (pid $pid) but not healthy yet, waiting"
  else
    rm -f "$PIDS/$name.pid"
    if [[ -n "$url" ]] && is_healthy "$url"; then
      die "$name: $url already answers, but not from a process started by stack.sh; stop it first"
    fi
    [[ -x "$1" ]] || die "$name: binary $1 missing (run scripts/build-collector.sh / build-backends.sh)"
    : > "$LOGS/$name.log"
    # Own session: the process outlives this script and gets no terminal signals.
    (cd "$ROOT" && exec nohup setsid "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null) &
    pid=$!
    echo "$pid" > "$PIDS/$name.pid"
    printf '%s\n' "$@" > "$PIDS/$name.cmd"
    readlink -f "$1" > "$PIDS/$name.exe"
    [[ -n "$url" ]] && echo "$url" > "$PIDS/$name.health"
    log "$name started (pid $pid), log $LOGS/$name.log"
  fi
  deadline=$(( $(date +%s) + TIMEOUT ))
  while true; do
    alive "$pid" || { rm -f "$PIDS/$name.pid"; fail_with_log "$name" "$name exited during start-up"; }
    if [[ -n "$url" ]]; then
      is_healthy "$url" && break
    elif grep -q "$pattern" "$LOGS/$name.log" 2>/dev/null; then
      break
    fi
    (( $(date +%s) < deadline )) || fail_with_log "$name" "$name not healthy within ${TIMEOUT}s (${url:-log pattern '$pattern'})"
    sleep 0.5
  done
  log "$name healthy${url:+ ($url)}"
}

start_component() {
  local name="$1" cmd ports
  mapfile -t cmd < <(command_for "$name")
  [[ ${#cmd[@]} -gt 0 ]] || exit 1
  if ports="$(processor_ports "$name")"; then
    # in a subshell: the processor's variables stay out of the other components' environment
    (
      set -- $ports
      mkdir -p "$STACK/$name"
      export OTEL_ML_PROCESSOR_INSTANCE_ID="$name"
      export OTEL_ML_PROCESSOR_GRPC_ENDPOINT="127.0.0.1:$1" OTEL_ML_PROCESSOR_HTTP_ENDPOINT="127.0.0.1:$2"
      export OTEL_ML_PROCESSOR_STORE_PATH="$STACK/$name/processor.db"
      export OTEL_ML_PROCESSOR_EXPORT_INTERVAL="${OTEL_ML_PROCESSOR_EXPORT_INTERVAL:-5s}"
      export OTEL_ML_PROCESSOR_COMPUTE_INTERVAL="${OTEL_ML_PROCESSOR_COMPUTE_INTERVAL:-2s}"
      export OTEL_ML_PROCESSOR_PERFORMANCE_INTERVAL="${OTEL_ML_PROCESSOR_PERFORMANCE_INTERVAL:-5s}"
      launch "$name" "$(health_url "$name")" "" "${cmd[@]}"
    ) || exit 1
  else
    launch "$name" "$(health_url "$name")" "" "${cmd[@]}"
  fi
}

stop_component() {
  local name="$1" pid i
  if pid="$(pid_of "$name")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      log "$name (pid $pid) did not stop in 10s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$name stopped (pid $pid)"
  else
    log "$name not running"
  fi
  rm -f "$PIDS/$name.pid" "$PIDS/$name.cmd" "$PIDS/$name.exe" "$PIDS/$name.health"
}

known_names() { # all components with a pid file, plus the standard ones
  local n
  { printf '%s\n' "${ALL_COMPONENTS[@]}"
    for n in "$PIDS"/*.pid; do [[ -e "$n" ]] && basename "$n" .pid; done; } | awk '!seen[$0]++'
}

status() {
  local rc=0 name pid url state
  while read -r name; do
    url="$(health_url "$name")"
    if pid="$(pid_of "$name")"; then
      if [[ -z "$url" ]] || is_healthy "$url"; then state="healthy"; else state="UNHEALTHY"; rc=1; fi
      printf '%-12s %-9s pid %-8s %s\n' "$name" "$state" "$pid" "$url"
    else
      printf '%-12s %-9s %-12s %s\n' "$name" "stopped" "" "$url"
      rc=1
    fi
  done < <(known_names)
  return $rc
}

cmd="${1:-status}"
shift || true
case "$cmd" in
  start)
    comps=("$@"); [[ ${#comps[@]} -gt 0 ]] || comps=("${ALL_COMPONENTS[@]}")
    ensure_built "${comps[@]}"
    for c in "${comps[@]}"; do start_component "$c"; done
    log "stack is up: OTLP 127.0.0.1:4317 (gRPC) / 4318 (HTTP); Jaeger API http://127.0.0.1:16686; Prometheus http://127.0.0.1:9090; processors http://127.0.0.1:4718/status, :4728/status"
    ;;
  stop)
    if [[ $# -gt 0 ]]; then comps=("$@"); else mapfile -t comps < <(known_names | tac); fi
    for c in "${comps[@]}"; do stop_component "$c"; done
    ;;
  restart)
    "$0" stop "$@"
    "$0" start "$@"
    ;;
  status) status ;;
  logs)
    [[ $# -ge 1 ]] || die "usage: $0 logs COMPONENT"
    tail -n "${LINES:-60}" "$LOGS/$1.log"
    ;;
  run-collector)
    [[ $# -ge 2 ]] || die "usage: $0 run-collector NAME CONFIG [HEALTH_URL]"
    name="$1"; config="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; url="${3:-}"
    [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad NAME '$name'"
    ensure_built agent
    launch "$name" "$url" "Everything is ready" "$BIN/otelcol-ml" "--config=$config"
    ;;
  stop-collector)
    [[ $# -ge 1 ]] || die "usage: $0 stop-collector NAME"
    stop_component "$1"
    ;;
  *) die "usage: $0 start|stop|restart|status|logs|run-collector|stop-collector" ;;
esac
