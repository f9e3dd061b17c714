# Shared helpers for the deploy/local scripts. Sourced, never run.
# shellcheck shell=bash

# Where local services keep their state, logs, pid files and the sinks' dumps. Outside
# the checkout so that several clones on one machine share (and reuse) one set.
: "${SENDMILL_LOCAL_DIR:=/var/tmp/sendmill-local}"
export SENDMILL_LOCAL_DIR

log() { printf '[sendmill-local] %s\n' "$*" >&2; }
die() { printf '[sendmill-local] ERROR: %s\n' "$*" >&2; exit 1; }

# Succeeds when something accepts TCP connections on HOST PORT.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Waits up to $3 seconds (default 20) for HOST PORT to accept connections.
wait_port() {
  local host=$1 port=$2 limit=${3:-20} i
  for ((i = 0; i < limit * 10; i++)); do
    port_open "$host" "$port" && return 0
    sleep 0.1
  done
  return 1
}

# Succeeds when the pid in FILE belongs to a running process.
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
