#!/usr/bin/env bash
# Create (or reuse) the project virtualenv and install swarmd into it.
# usage: scripts/bootstrap-venv.sh [dev]     VENV=path overrides .venv
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian ships venv support separately; install it when we are allowed to.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null
            rm -rf "$VENV"
            "$PYTHON" -m venv "$VENV"
        else
            echo "error: '$PYTHON -m venv' failed; install python3-venv (sudo apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
fi
# Reinstall only when the dependencies changed (a stamp per pyproject.toml content and extra).
extra=${1:-}
base="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
stamp="$base${extra:+-$extra}"
if [ ! -e "$stamp" ] && ! { [ -z "$extra" ] && [ -e "$base-dev" ]; }; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    if [ "$extra" = dev ]; then
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
    else
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
    fi
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
