#!/usr/bin/env bash
# The whole test suite (unit, integration with real swarmd processes, and the network-namespace
# tests, which run as root and skip with a reason elsewhere). Extra arguments go to pytest.
# Four workers on two cores: the integration tests mostly wait on real daemons (the load stays
# near 2), so twice the workers halves the wall time (15 -> 8 minutes for 1,665 tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap-venv.sh dev
VENV=${VENV:-.venv}
exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-4}" -q "$@"
