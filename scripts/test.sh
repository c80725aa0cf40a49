#!/usr/bin/env bash
# The whole test suite on a fresh machine: install the package with its test extras, build (cached)
# and start the local collector stack, run pytest, stop the stack.
#
#   scripts/test.sh [PYTEST ARGS...]
#
# End-to-end tests need the stack; with CI=true they fail instead of skipping when it is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
scripts/stack.sh start
trap 'scripts/stack.sh stop || true' EXIT
"$PYTHON" -m pytest "$@"
