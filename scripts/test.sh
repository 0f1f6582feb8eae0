#!/usr/bin/env bash
# The whole test suite (unit, integration with real swarmd processes, and the network-namespace
# tests, which run as root and skip with a reason elsewhere). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap-venv.sh dev
VENV=${VENV:-.venv}
exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" -q "$@"
