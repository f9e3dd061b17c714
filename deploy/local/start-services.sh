#!/usr/bin/env bash
# Starts, on 127.0.0.1, every service Sendmill talks to locally, reusing any that already
# answers: Redis, PostgreSQL, ClickHouse, dnsmasq (MX records for the *.test domains) and
# postfix's smtp-sink as the MX hosts of those domains. Idempotent; prints where each
# service listens. Stop what it started with stop-services.sh.
#
# Apache Kafka: one combined KRaft node (broker 127.0.0.1:9092, controller :9093) on
# the jars install-packages.sh fetched, its data under $SENDMILL_LOCAL_DIR/kafka/broker.
#
# Test domains (dnsmasq on 127.0.0.1:5353), every MX host on port 25:
#   ok.test, example.test  MX -> 127.0.0.2  accepts everything, dumps each message
#   bounce.test            MX -> 127.0.0.3  answers RCPT with 550 5.1.1
#   defer.test             MX -> 127.0.0.4  answers RCPT with 451 4.7.1
#   failover.test          MX 10 -> 127.0.0.5 (nothing listens), MX 20 -> 127.0.0.2
#   nullmx.test            null MX (RFC 7505)
#   nomx.test              no MX, an A record 127.0.0.2 (implicit MX, RFC 5321 §5.1)
#   ratelimited.test       MX -> 127.0.0.6  answers RCPT with 421 and hangs up
#   tls.test               MX -> 127.0.0.21 postfix offering STARTTLS (certificate for
#                          mx.tls.test from the local CA), relaying to the accepting sink
#   xn--bcher-kva.test     (bücher.test) MX -> 127.0.0.2, an internationalised domain
#   utf8.test              MX -> 127.0.0.24 postfix offering SMTPUTF8 (RFC 6531), which
#                          delivers into the Maildir $SENDMILL_LOCAL_DIR/postfix-utf8/mail/
#                          (the accepting sink does not offer SMTPUTF8)
#   sts-enforce.test       MTA-STS (RFC 8461) domains: TXT _mta-sts.<domain>, policy host
#   sts-testing.test       mta-sts.<domain> -> 127.0.0.23, where a test serves the policy
#   sts-tls.test           over HTTPS with $SENDMILL_LOCAL_DIR/ca/mta-sts.{pem,key};
#   sts-mismatch.test      MX: enforce, testing -> 127.0.0.2 (no STARTTLS); tls,
#   sts-badcert.test       mismatch -> mx.tls.test; badcert -> mx2.tls.test (the same
#                          postfix, whose certificate names only mx.tls.test)
# The local CA ($SENDMILL_LOCAL_DIR/ca/ca.pem) signs the certificates of mx.tls.test and
# of the MTA-STS policy hosts; tests trust it as an extra root.
#   hook.rebind.test       A 127.0.0.1 (webhooks must refuse it at connect time)
#   d1.test .. d50.test    MX -> 127.0.0.11 .. 127.0.0.20, round robin (bench sinks,
#                          started with BENCH_SINKS=1)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

dir=$SENDMILL_LOCAL_DIR
mkdir -p "$dir"

# --- Redis -----------------------------------------------------------------------------
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "redis: reusing 127.0.0.1:6379"
else
  mkdir -p "$dir/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$dir/redis" --logfile "$dir/redis/redis.log" --pidfile "$dir/redis/redis.pid"
  wait_port 127.0.0.1 6379 || die "redis did not start (see $dir/redis/redis.log)"
  log "redis: started on 127.0.0.1:6379"
fi

# --- Apache Kafka (127.0.0.1:9092) -------------------------------------------------------
if kcat -b 127.0.0.1:9092 -L -m 5 >/dev/null 2>&1; then
  log "kafka: reusing 127.0.0.1:9092"
else
  # Every test shares this broker: up to ~30 pipelines at once, some moving 2.8 GB of
  # multi-megabyte records, so it gets more heap than a fault-suite node.
  KAFKA_HEAP="-Xms512m -Xmx2g" \
    "$(dirname "$0")/kafka-node.sh" "$dir/kafka/broker" 1 127.0.0.1 9092 9093 1@127.0.0.1:9093 >/dev/null
  kcat -b 127.0.0.1:9092 -L -m 10 >/dev/null 2>&1 \
    || die "kafka started but answers no metadata request (see $dir/kafka/broker/server.log)"
  log "kafka: started on 127.0.0.1:9092 (data in $dir/kafka/broker)"
fi

# --- PostgreSQL ------------------------------------------------------------------------
if pg_isready -q -h 127.0.0.1 -p 5432; then
  log "postgresql: reusing 127.0.0.1:5432"
else
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  [ -d "/etc/postgresql/$ver/main" ] || as_root pg_createcluster "$ver" main >/dev/null
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  # stop-services.sh stops only a cluster this script started.
  echo "$ver" >"$dir/postgresql.started"
  wait_port 127.0.0.1 5432 30 || die "postgresql did not start"
  log "postgresql: started $ver on 127.0.0.1:5432"
fi
psql_admin() { as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@"; }
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'sendmill'")" != 1 ]; then
  psql_admin -c "CREATE ROLE sendmill LOGIN PASSWORD 'sendmill' CREATEDB"
fi
for db in sendmill sendmill_test; do
  if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $db OWNER sendmill"
  fi
done

# --- ClickHouse (HTTP 18123, native 19000) ---------------------------------------------
ch=$dir/clickhouse
if curl -fsS http://127.0.0.1:18123/ping >/dev/null 2>&1; then
  log "clickhouse: reusing 127.0.0.1:18123"
else
  mkdir -p "$ch"/{data,tmp,user_files,format_schemas,log}
  cp /etc/clickhouse-server/users.xml "$ch/users.xml"
  sed -e "s#<http_port>8123</http_port>#<http_port>18123</http_port>#" \
      -e "s#<tcp_port>9000</tcp_port>#<tcp_port>19000</tcp_port>#" \
      -e "s#<interserver_http_port>9009</interserver_http_port>#<interserver_http_port>19009</interserver_http_port>#" \
      -e "s#<path>/var/lib/clickhouse/</path>#<path>$ch/data/</path>#" \
      -e "s#<tmp_path>/var/lib/clickhouse/tmp/</tmp_path>#<tmp_path>$ch/tmp/</tmp_path>#" \
      -e "s#<user_files_path>/var/lib/clickhouse/user_files/</user_files_path>#<user_files_path>$ch/user_files/</user_files_path>#" \
      -e "s#<format_schema_path>/var/lib/clickhouse/format_schemas/</format_schema_path>#<format_schema_path>$ch/format_schemas/</format_schema_path>#" \
      -e "s#/var/log/clickhouse-server/#$ch/log/#g" \
      -e "s#<listen_host>::1</listen_host>##" \
      /etc/clickhouse-server/config.xml >"$ch/config.xml"
  # The server itself replaces a pid file whose process is gone and refuses to start
  # beside a live one (one still loading after an earlier attempt gave up): keep it.
  clickhouse-server --config-file="$ch/config.xml" --pid-file="$ch/clickhouse.pid" --daemon
  # Start-up loads every database's metadata first: 5 s here with ~800 test databases,
  # longer on a busy machine. Wait while the server lives (up to 180 s), not a fixed 10 s.
  for ((i = 0; i < 1800; i++)); do
    curl -fsS http://127.0.0.1:18123/ping >/dev/null 2>&1 && break
    if ((i > 50)) && ! pid_alive "$ch/clickhouse.pid"; then break; fi
    sleep 0.1
  done
  if ! curl -fsS http://127.0.0.1:18123/ping >/dev/null 2>&1; then
    tail -n 20 "$ch/log/clickhouse-server.err.log" >&2 || true
    die "clickhouse did not start (see $ch/log)"
  fi
  log "clickhouse: started on 127.0.0.1:18123 (native 19000)"
  # Tests and benches each make their own database (t<32 hex>, sendmill_bench_<32 hex>)
  # and leave it for inspection. ClickHouse was down, so no test was using one: drop
  # them, so that start-up and the data directory do not grow with every run. This is
  # housekeeping: a failure is reported, not fatal.
  if stale=$(curl -fsS http://127.0.0.1:18123/ --data-binary \
      "SELECT name FROM system.databases WHERE match(name, '^(t|sendmill_bench_)[0-9a-f]{32}$')") \
    && [ -n "$stale" ]; then
    if sed 's/.*/DROP DATABASE IF EXISTS `&`;/' <<<"$stale" \
      | clickhouse-client --port 19000 --multiquery; then
      log "clickhouse: dropped $(wc -l <<<"$stale") databases of earlier test runs"
    else
      log "clickhouse: WARNING: could not drop the earlier runs' test databases"
    fi
  fi
fi

# --- dnsmasq (127.0.0.1:5353) ----------------------------------------------------------
dns=$dir/dnsmasq
mkdir -p "$dns/conf.d"
{
  echo "port=5353"
  echo "listen-address=127.0.0.1"
  echo "bind-interfaces"
  echo "no-resolv"
  echo "no-hosts"
  echo "local=/test/"
  echo "local-ttl=300"
  echo "conf-dir=$dns/conf.d,*.conf"
  echo "mx-host=ok.test,mx.ok.test,10"
  echo "host-record=mx.ok.test,127.0.0.2"
  echo "mx-host=example.test,mx.example.test,10"
  echo "host-record=mx.example.test,127.0.0.2"
  echo "mx-host=bounce.test,mx.bounce.test,10"
  echo "host-record=mx.bounce.test,127.0.0.3"
  echo "mx-host=defer.test,mx.defer.test,10"
  echo "host-record=mx.defer.test,127.0.0.4"
  echo "mx-host=failover.test,mx1.failover.test,10"
  echo "mx-host=failover.test,mx2.failover.test,20"
  echo "host-record=mx1.failover.test,127.0.0.5"
  echo "host-record=mx2.failover.test,127.0.0.2"
  echo "mx-host=nullmx.test,.,0"
  echo "host-record=nomx.test,127.0.0.2"
  echo "mx-host=tls.test,mx.tls.test,10"
  echo "host-record=mx.tls.test,127.0.0.21"
  echo "mx-host=xn--bcher-kva.test,mx.ok.test,10"
  echo "mx-host=utf8.test,mx.utf8.test,10"
  echo "host-record=mx.utf8.test,127.0.0.24"
  echo "host-record=mx2.tls.test,127.0.0.21"
  for sts in enforce testing tls mismatch badcert; do
    case $sts in enforce|testing) mx=mx.ok.test ;; badcert) mx=mx2.tls.test ;; *) mx=mx.tls.test ;; esac
    echo "mx-host=sts-$sts.test,$mx,10"
    echo "txt-record=_mta-sts.sts-$sts.test,\"v=STSv1; id=20261130T000000;\""
    echo "host-record=mta-sts.sts-$sts.test,127.0.0.23"
  done
  # A name that resolves to loopback, as a DNS-rebinding attacker's would (the webhook
  # sender must refuse it at connect time).
  echo "host-record=hook.rebind.test,127.0.0.1"
  echo "mx-host=ratelimited.test,mx.ratelimited.test,10"
  echo "host-record=mx.ratelimited.test,127.0.0.6"
  # Bench domains: 50 domains (50 providers) over the 10 bench sinks.
  for n in $(seq 1 50); do
    echo "mx-host=d$n.test,mx.d$n.test,10"
    echo "host-record=mx.d$n.test,127.0.0.$((11 + (n - 1) % 10))"
  done
} >"$dns/dnsmasq.conf.new"
# Restart only when the config changed (or dnsmasq is not running): DKIM records written
# by `sendmill` into conf.d are picked up by re-running this script with RESTART_DNS=1.
if pid_alive "$dns/dnsmasq.pid" && cmp -s "$dns/dnsmasq.conf.new" "$dns/dnsmasq.conf" \
   && [ "${RESTART_DNS:-0}" != 1 ]; then
  log "dnsmasq: reusing 127.0.0.1:5353"
else
  if pid_alive "$dns/dnsmasq.pid"; then kill "$(cat "$dns/dnsmasq.pid")"; sleep 0.2; fi
  mv "$dns/dnsmasq.conf.new" "$dns/dnsmasq.conf"
  dnsmasq --conf-file="$dns/dnsmasq.conf" --pid-file="$dns/dnsmasq.pid" --user=nobody
  log "dnsmasq: started on 127.0.0.1:5353"
fi
rm -f "$dns/dnsmasq.conf.new"

# --- smtp-sink MX hosts (port 25) --------------------------------------------------------
sinks=$dir/sinks
mkdir -p "$sinks"
# start_sink NAME ADDRESS [smtp-sink options...]
start_sink() {
  local name=$1 addr=$2; shift 2
  if port_open "$addr" 25; then
    log "smtp-sink $name: reusing $addr:25"
    return
  fi
  mkdir -p "$sinks/$name"
  chmod 1777 "$sinks/$name"
  setsid nohup smtp-sink -u nobody -h "mx-$name.test" -m 1024 "$@" "$addr:25" 1024 \
    >"$sinks/$name.log" 2>&1 </dev/null &
  echo $! >"$sinks/$name.pid"
  wait_port "$addr" 25 10 || die "smtp-sink $name did not start (see $sinks/$name.log)"
  log "smtp-sink $name: started on $addr:25"
}
start_sink ok 127.0.0.2 -d "$sinks/ok/%Y%m%d/"
start_sink bounce 127.0.0.3 -f RCPT -B "550 5.1.1 <rcpt>: Recipient address rejected: User unknown"
start_sink defer 127.0.0.4 -r RCPT -b "451 4.7.1 Greylisted, please try again later"
start_sink ratelimit 127.0.0.6 -Q RCPT
if [ "${BENCH_SINKS:-0}" = 1 ]; then
  for n in $(seq 1 10); do start_sink "d$n" "127.0.0.$((10 + n))"; done
fi

# --- Sendmill's key-encryption key (deploy/local/sendmill.toml [secrets]) ----------------
# DKIM private keys and webhook secrets are sealed at rest under it. Made once, kept.
if [ ! -s "$dir/keks" ]; then
  (umask 077 && echo "local-1:$(openssl rand -base64 32)" >"$dir/keks")
  log "secrets: made a key-encryption key in $dir/keks"
fi

# --- A local certificate authority -------------------------------------------------------
# Signs the certificates of the local MX hosts and MTA-STS policy hosts, so that TLS
# can be verified as on the Internet (tests trust ca.pem as an extra root).
ca=$dir/ca
mkdir -p "$ca"
if [ ! -f "$ca/ca.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Sendmill local test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$ca/ca.key" -out "$ca/ca.pem" 2>/dev/null
fi
# ca_sign NAME SAN...: NAME.pem and NAME.key under $ca, for the DNS names SAN.
ca_sign() {
  local name=$1; shift
  local sans; sans=$(printf 'DNS:%s,' "$@"); sans=${sans%,}
  if [ -f "$ca/$name.pem" ] && openssl verify -CAfile "$ca/ca.pem" "$ca/$name.pem" >/dev/null 2>&1 \
     && [ "$(cat "$ca/$name.sans" 2>/dev/null)" = "$sans" ]; then
    return
  fi
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$ca/$name.key" \
    -out "$ca/$name.csr" 2>/dev/null
  openssl x509 -req -in "$ca/$name.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca.key" -CAcreateserial \
    -days 3650 -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans") \
    -out "$ca/$name.pem" 2>/dev/null
  rm -f "$ca/$name.csr"
  echo "$sans" >"$ca/$name.sans"
}
ca_sign mx-tls mx.tls.test
# The SMTP submission listener of the tests (and of `sendmill all` run locally).
ca_sign submission submission.sendmill.test localhost
# The inbound SMTP server (the MX of the return-path domains) offers STARTTLS with this.
ca_sign inbound inbound.sendmill.test localhost
ca_sign mta-sts mta-sts.sts-enforce.test mta-sts.sts-testing.test mta-sts.sts-tls.test \
  mta-sts.sts-mismatch.test mta-sts.sts-badcert.test

# --- postfix with STARTTLS (127.0.0.21:25) ----------------------------------------------
# A real MTA offering STARTTLS (self-signed certificate) for tls.test; it relays what it
# accepts to the accepting smtp-sink, whose dump then carries postfix's Received header
# saying whether the session was encrypted.
pf=$dir/postfix-tls
if port_open 127.0.0.21 25; then
  log "postfix (STARTTLS): reusing 127.0.0.21:25"
else
  mkdir -p "$pf"
  postfix_start "$pf" 127.0.0.21 <<MAIN
myhostname = mx.tls.test
relay_domains = tls.test sts-tls.test sts-mismatch.test
relay_transport = smtp:[127.0.0.2]:25
smtpd_tls_cert_file = $ca/mx-tls.pem
smtpd_tls_key_file = $ca/mx-tls.key
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
MAIN
  log "postfix (STARTTLS): started on 127.0.0.21:25"
fi
# A running instance from before the local CA or the MTA-STS domains gets them now.
if [ "$(postconf -c "$pf" -h smtpd_tls_cert_file)" != "$ca/mx-tls.pem" ] \
   || ! postconf -c "$pf" -h relay_domains | grep -q sts-tls.test; then
  postconf -c "$pf" -e "smtpd_tls_cert_file = $ca/mx-tls.pem" "smtpd_tls_key_file = $ca/mx-tls.key" \
    "relay_domains = tls.test sts-tls.test sts-mismatch.test"
  postfix -c "$pf" reload >/dev/null 2>&1 || die "postfix (STARTTLS) did not reload (see $pf/maillog)"
  log "postfix (STARTTLS): reconfigured"
fi

# --- postfix with SMTPUTF8 (127.0.0.24:25) ----------------------------------------------
# A real MTA offering SMTPUTF8 for utf8.test: every recipient of the domain is delivered
# into one Maildir, whose files carry the envelope recipient (X-Original-To) as received.
pf8=$dir/postfix-utf8
if port_open 127.0.0.24 25; then
  log "postfix (SMTPUTF8): reusing 127.0.0.24:25"
else
  mkdir -p "$pf8/mail"
  chown nobody:nogroup "$pf8/mail"
  postfix_start "$pf8" 127.0.0.24 <<MAIN
myhostname = mx.utf8.test
smtputf8_enable = yes
virtual_mailbox_domains = utf8.test
virtual_mailbox_base = $pf8
virtual_mailbox_maps = static:mail/
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(getent group nogroup | cut -d: -f3)
MAIN
  log "postfix (SMTPUTF8): started on 127.0.0.24:25"
fi

cat <<INFO
Local services for Sendmill:
  kafka       127.0.0.1:9092  (Apache Kafka, KRaft; topics by \`sendmill migrate\`)
  redis       redis://127.0.0.1:6379
  postgresql  postgres://sendmill:sendmill@127.0.0.1:5432/sendmill  (tests: sendmill_test)
  clickhouse  http://127.0.0.1:18123
  dns         127.0.0.1:5353  (MX records for *.test)
  smtp-sink   127.0.0.2:25 accepts (dumps to $sinks/ok), 127.0.0.3:25 5xx, 127.0.0.4:25 4xx, 127.0.0.6:25 421
  postfix     127.0.0.21:25 STARTTLS (tls.test), 127.0.0.24:25 SMTPUTF8 (utf8.test, Maildir $pf8/mail)
  local CA    $ca/ca.pem
  KEK file    $dir/keks  (deploy/local/sendmill.toml [secrets])
INFO
