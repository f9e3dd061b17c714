#!/usr/bin/env bash
# Stops the sendmill process quickstart.sh started; with --services, also the services
# start-services.sh started.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
pidfile=$SENDMILL_LOCAL_DIR/sendmill.pid
if pid_alive "$pidfile"; then
  kill "$(cat "$pidfile")" && log "stopped sendmill"
  rm -f "$pidfile"
fi
if [ "${1:-}" = --services ]; then "$here/stop-services.sh"; fi
