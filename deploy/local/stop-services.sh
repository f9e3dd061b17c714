#!/usr/bin/env bash
# Stops the services start-services.sh started (by their pid files); services it reused
# and did not start are left alone.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
dir=$SENDMILL_LOCAL_DIR
for pidfile in "$dir"/kafka/broker/kafka.pid "$dir"/redis/redis.pid "$dir"/clickhouse/clickhouse.pid "$dir"/dnsmasq/dnsmasq.pid "$dir"/sinks/*.pid; do
  [ -e "$pidfile" ] || continue
  if pid_alive "$pidfile"; then kill "$(cat "$pidfile")" && log "stopped $(basename "$pidfile" .pid)"; fi
  rm -f "$pidfile"
done
if [ -f "$dir/postfix-tls/main.cf" ] && port_open 127.0.0.21 25; then
  postfix -c "$dir/postfix-tls" stop >/dev/null 2>&1 && log "stopped postfix (STARTTLS)"
fi
if [ -f "$dir/postfix-utf8/main.cf" ] && port_open 127.0.0.24 25; then
  postfix -c "$dir/postfix-utf8" stop >/dev/null 2>&1 && log "stopped postfix (SMTPUTF8)"
fi
if [ -s "$dir/postgresql.started" ]; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$(cat "$dir/postgresql.started")" main stop \
    && log "stopped postgresql"
  rm -f "$dir/postgresql.started"
fi
