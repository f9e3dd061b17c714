#!/usr/bin/env bash
# The README's first command: installs what is missing, starts the local services, builds
# Sendmill, creates the Kafka topics and a development tenant, and runs every stage in
# one process in the background, on the local Apache Kafka broker. Prints the API key, a curl that sends a message, and where
# to see it delivered. Stop it with deploy/local/stop.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

"$here/install-packages.sh"
"$here/start-services.sh" >/dev/null

log "building sendmill (release)"
(cd "$repo" && cargo build --release --quiet -p sendmill)
bin=$repo/target/release/sendmill
config=$here/sendmill.toml
export SENDMILL_CONFIG=$config

"$bin" migrate 2>"$SENDMILL_LOCAL_DIR/migrate.log" \
  || die "sendmill migrate failed: $(tail -5 "$SENDMILL_LOCAL_DIR/migrate.log")"
key=$("$bin" seed --domain example.test --dnsmasq-dir "$SENDMILL_LOCAL_DIR/dnsmasq/conf.d" 2>/dev/null)
# dnsmasq reads the new DKIM record only on start.
RESTART_DNS=1 "$here/start-services.sh" >/dev/null 2>&1

pidfile=$SENDMILL_LOCAL_DIR/sendmill.pid
if pid_alive "$pidfile"; then
  kill "$(cat "$pidfile")"
  while pid_alive "$pidfile"; do sleep 0.1; done
fi
setsid nohup "$bin" all >"$SENDMILL_LOCAL_DIR/sendmill.log" 2>&1 </dev/null &
echo $! >"$pidfile"
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:8080/healthz >/dev/null 2>&1 && break
  pid_alive "$pidfile" || die "sendmill exited; see $SENDMILL_LOCAL_DIR/sendmill.log"
  sleep 0.1
done
curl -fsS http://127.0.0.1:8080/healthz >/dev/null || die "sendmill did not answer; see $SENDMILL_LOCAL_DIR/sendmill.log"

cat <<INFO

Sendmill is running (pid $(cat "$pidfile"), log $SENDMILL_LOCAL_DIR/sendmill.log).
Kafka: Apache Kafka on 127.0.0.1:9092 (data in $SENDMILL_LOCAL_DIR/kafka/broker);
queued mail survives a restart of Sendmill and of the broker.
  SENDMILL_CONFIG=$config $bin kafka check   # every topic and its settings

API key (shown once):
  export SENDMILL_API_KEY=$key

Send a message:
  curl -s http://127.0.0.1:8080/v1/messages \\
    -H "Authorization: Bearer \$SENDMILL_API_KEY" -H 'Content-Type: application/json' \\
    -d '{"from": "Example <hello@example.test>", "to": [{"email": "ada@ok.test", "data": {"name": "Ada"}}],
         "subject": "Hello {{name}}", "html": "<p>Hi {{name}}!</p>", "text": "Hi {{name}}!"}'

See it delivered:
  ls -t $SENDMILL_LOCAL_DIR/sinks/ok/*/ | head          # what the MX host (smtp-sink) received
  deploy/local/dkim-verify.py <that file>             # dkimpy checks its DKIM signature
  curl -s http://127.0.0.1:8081/v1/messages/<message_id> -H "Authorization: Bearer \$SENDMILL_API_KEY"

Other recipients: nobody@bounce.test (550, bounced), later@defer.test (451, deferred).
Stop: deploy/local/stop.sh
INFO
