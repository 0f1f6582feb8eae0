#!/usr/bin/env bash
# The main job on a fresh machine: install swarmd into .venv, start a local swarmd as the current
# user (state and socket under your home directory, no root needed), create a swarm and print the
# command that joins other hosts to it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap-venv.sh
VENV=${VENV:-.venv}
BIN=$(cd "$VENV/bin" && pwd)

STATE_DIR=${SWARMD_STATE_DIR:-$HOME/.local/state/swarmd-quickstart}
SOCKET=${SWARMD_SOCKET:-$STATE_DIR/swarmd.sock}
ADVERTISE=${SWARMD_ADVERTISE_ADDR:-127.0.0.1}
LISTEN=${SWARMD_LISTEN_ADDR:-127.0.0.1:2377}
LOG=$STATE_DIR/swarmd.log
PIDFILE=$STATE_DIR/swarmd.pid
ctl() { "$BIN/swarmctl" -H "unix://$SOCKET" "$@"; }

mkdir -p "$STATE_DIR" && chmod 700 "$STATE_DIR"
if ! ctl info >/dev/null 2>&1; then
    echo "Starting swarmd (state: $STATE_DIR/state, log: $LOG)"
    nohup "$BIN/swarmd" --state-dir "$STATE_DIR/state" --control-socket "$SOCKET" >>"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 100); do ctl info >/dev/null 2>&1 && break; sleep 0.1; done
    ctl info >/dev/null || { echo "swarmd did not start; see $LOG" >&2; exit 1; }
fi

if ctl info --format json | grep -q '"LocalNodeState": "inactive"'; then
    ctl init --advertise-addr "$ADVERTISE" --listen-addr "$LISTEN"
else
    echo "This node is already part of a swarm:"
    echo
    ctl join-token worker
fi
echo
ctl node ls
echo
echo "Talk to this daemon with:  $BIN/swarmctl -H unix://$SOCKET <command>"
echo "Stop it with:              kill \$(cat $PIDFILE)   (the swarm resumes when swarmd starts again)"
echo "Remove everything with:    $BIN/swarmctl -H unix://$SOCKET leave --force; kill \$(cat $PIDFILE)"
