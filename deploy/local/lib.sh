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

# postfix_start DIR ADDRESS: Debian's postfix with its own config and queue in DIR,
# smtpd on ADDRESS:25 only, none of its services chrooted (the chroot would need a copy
# of /etc and /dev), logging to DIR/maillog. main.cf settings of the instance's own
# come on stdin. Stop it with `postfix -c DIR stop`.
postfix_start() {
  local pf=$1 listen=$2
  mkdir -p "$pf/queue" "$pf/data"
  {
    cat <<MAIN
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
# Postfix accepts only addresses of a configured interface here; the listener's own
# address is set on the smtp service in master.cf instead.
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_tls_security_level = none
maillog_file = $pf/maillog
MAIN
    cat
  } >"$pf/main.cf"
  awk -v l="$listen" '/^[a-z]/ && NF >= 8 { $5 = "n" }
       $1 == "smtp" && $2 == "inet" { $1 = l ":smtp" }
       { print }' /etc/postfix/master.cf >"$pf/master.cf"
  chown postfix "$pf/data"
  postfix -c "$pf" set-permissions >/dev/null 2>&1 || true
  # postfix reports fatal errors on a terminal only: `script` gives it one.
  script -qc "postfix -c $pf start" "$pf/start.log" >/dev/null \
    || die "postfix did not start: $(cat "$pf/start.log")"
  wait_port "$listen" 25 10 || die "postfix did not listen on $listen:25 (see $pf/maillog)"
}
