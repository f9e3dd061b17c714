#!/usr/bin/env bash
# postfix-bench.sh MESSAGES DOMAINS FILE
#
# The Postfix side of `sendmill bench pipeline --postfix`: Debian's postfix, as an
# outbound relay on 127.0.0.22:25 with its own config and queue, relays FILE to
# d1.test..dDOMAINS.test over the same bench sinks the pipeline bench uses (127.0.0.11-20,
# the same round robin as dnsmasq's MX records), fed by postfix's own smtp-source (5
# sessions per domain, several messages per session). The clock runs from the first
# message injected to an empty queue. Postfix keeps its default process and concurrency
# limits; it does not sign (Debian has no DKIM signer inside postfix).
#
# Prints progress on stderr and, as its last line on stdout,
# {"delivered": N, "seconds": S}. Stops the postfix it started.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

messages=${1:?messages}
domains=${2:?domains}
file=${3:?message file}
[ -f "$file" ] || die "no message file $file"
command -v smtp-source >/dev/null || die "smtp-source is missing: run deploy/local/install-packages.sh"
for n in $(seq 1 "$(( domains < 10 ? domains : 10 ))"); do
  port_open "127.0.0.$((10 + n))" 25 || die "no bench sink on 127.0.0.$((10 + n)): BENCH_SINKS=1 deploy/local/start-services.sh"
done
listen=127.0.0.22
port_open "$listen" 25 && die "something already listens on $listen:25"

pf=$SENDMILL_LOCAL_DIR/postfix-bench
rm -rf "$pf"
transport=""
relay=""
for n in $(seq 1 "$domains"); do
  transport="$transport d$n.test=smtp:[127.0.0.$((11 + (n - 1) % 10))]:25"
  relay="$relay d$n.test"
done
postfix_start "$pf" "$listen" <<MAIN
myhostname = postfix-bench.test
relay_domains =$relay
transport_maps = inline:{$(echo "$transport" | sed 's/^ //; s/ /, /g')}
MAIN
trap 'postfix -c "$pf" stop >/dev/null 2>&1 || true' EXIT

queued() { find "$pf/queue/maildrop" "$pf/queue/incoming" "$pf/queue/active" \
  "$pf/queue/deferred" "$pf/queue/hold" -type f 2>/dev/null | wc -l; }
sent() { grep -c ' status=sent ' "$pf/maillog" 2>/dev/null || true; }

elapsed() { awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }'; }
per_domain=$(( messages / domains ))
log "postfix: relaying $((per_domain * domains)) messages of $(stat -c %s "$file") B to $domains domains"
start=$(date +%s.%N)
pids=()
for n in $(seq 1 "$domains"); do
  smtp-source -d -N -s 5 -m "$per_domain" -F "$file" -f bench@postfix-bench.test \
    -t "rcpt@d$n.test" "$listen:25" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || die "smtp-source failed"; done
log "postfix: injected after $(elapsed) s; waiting for an empty queue"
deadline=$(( $(date +%s) + 600 ))
while [ "$(queued)" -gt 0 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || die "postfix still holds $(queued) messages after 600 s"
  sleep 0.1
done
seconds=$(elapsed)
# postlogd writes the log a moment after the queue empties.
for _ in $(seq 1 50); do
  [ "$(sent)" -ge "$((per_domain * domains))" ] && break
  sleep 0.1
done
delivered=$(sent)
log "postfix: $delivered delivered; $(grep -c ' status=deferred ' "$pf/maillog" || true) deferrals"
printf '{"delivered": %d, "seconds": %s}\n' "$delivered" "$seconds"
