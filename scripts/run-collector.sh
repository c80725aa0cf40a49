#!/usr/bin/env bash
# Run otelcol-ml with any config file in the background, as component NAME of the local stack:
#   scripts/run-collector.sh CONFIG NAME [HEALTH_URL]    start, wait until ready (log or HEALTH_URL)
#   scripts/stack.sh stop NAME                           stop it again
# pid in .stack/pids/NAME.pid, log in .stack/logs/NAME.log. Builds otelcol-ml if missing.
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CONFIG NAME [HEALTH_URL]" >&2; exit 2; }
exec "$(dirname "${BASH_SOURCE[0]}")/stack.sh" run-collector "$2" "$1" "${3:-}"
