#!/usr/bin/env bash
# Starts one Apache Kafka node (KRaft, combined broker and controller) from the jars
# install-packages.sh fetched from Maven Central into $SENDMILL_LOCAL_DIR/kafka/libs, and
# waits until it serves. Used by start-services.sh for the local broker and by the fault
# suite for its own brokers (one node, or three forming a cluster).
#
#   kafka-node.sh DIR NODE_ID HOST PORT CONTROLLER_PORT VOTERS
#
# DIR      the node's own folder: server.properties, data/, server.log, kafka.pid,
#          cluster.id. Storage is formatted once (when data/meta.properties is missing);
#          a node started again runs on its data.
# VOTERS   the controller quorum, `ID@HOST:CONTROLLER_PORT,...` (the node itself
#          included); every node of a cluster gets the same list and the same cluster id,
#          read from DIR/cluster.id when it exists, else from $KAFKA_CLUSTER_ID, else new.
# $KAFKA_EXTRA_PROPS (newline-separated) adds server.properties lines; $KAFKA_HEAP
# (default "-Xms256m -Xmx512m") sizes the JVM. A node whose heap runs out exits (and says
# so in stdout.log) instead of living on with dead request threads, which clients see as
# endless "Message timed out".
#
# Prints the node's pid. The node is ready when it logged "Kafka Server started" and
# accepts connections on HOST:PORT; this script waits up to 60 s for both.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -eq 6 ] || die "usage: kafka-node.sh DIR NODE_ID HOST PORT CONTROLLER_PORT VOTERS"
node_dir=$1 node_id=$2 host=$3 port=$4 controller_port=$5 voters=$6
libs=$SENDMILL_LOCAL_DIR/kafka/libs
[ -d "$libs" ] && ls "$libs"/kafka_2.13-*.jar >/dev/null 2>&1 \
  || die "no Kafka jars in $libs: run deploy/local/install-packages.sh"
mkdir -p "$node_dir/data"
node_dir=$(cd "$node_dir" && pwd)

if pid_alive "$node_dir/kafka.pid"; then
  die "kafka node $node_id already runs (pid $(cat "$node_dir/kafka.pid"))"
fi

replicas=$(awk -F, '{ print NF }' <<<"$voters")
min_isr=$((replicas > 1 ? 2 : 1))
cat >"$node_dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$controller_port
advertised.listeners=PLAINTEXT://$host:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$node_dir/data
# Internal topics replicated over the whole cluster (1 for a single node).
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
# Topics are created and reconciled by \`sendmill migrate\`, never on first use.
auto.create.topics.enable=false
# A consumer group starts at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# Room for Sendmill's largest record (a message at the attachment limit, base64, in
# JSON): topics set their own max.message.bytes, replication must fetch it.
message.max.bytes=33554432
replica.fetch.max.bytes=33554432
# Tests create and delete many topics: let deletion free them at once.
delete.topic.enable=true
num.partitions=1
# Requests read off sockets but not yet handled may hold at most this much heap; beyond
# it the broker stops reading (back-pressure) instead of running out of memory. Many
# clients producing multi-megabyte records at once otherwise fill a small test heap.
queued.max.request.bytes=134217728
${KAFKA_EXTRA_PROPS:-}
PROPS

cat >"$node_dir/log4j2.properties" <<LOG
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $node_dir/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
LOG

if [ ! -f "$node_dir/data/meta.properties" ]; then
  if [ -s "$node_dir/cluster.id" ]; then
    cluster_id=$(cat "$node_dir/cluster.id")
  elif [ -n "${KAFKA_CLUSTER_ID:-}" ]; then
    cluster_id=$KAFKA_CLUSTER_ID
  else
    cluster_id=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null)
  fi
  echo "$cluster_id" >"$node_dir/cluster.id"
  # --cluster-id=… (not -t …): a generated id may begin with "-".
  java -cp "$libs/*" kafka.tools.StorageTool format --cluster-id="$cluster_id" \
    -c "$node_dir/server.properties" >"$node_dir/format.log" 2>&1 \
    || die "formatting kafka node $node_id failed: $(cat "$node_dir/format.log")"
fi

: >"$node_dir/server.log"
# shellcheck disable=SC2086
setsid nohup java ${KAFKA_HEAP:--Xms256m -Xmx512m} -XX:+ExitOnOutOfMemoryError \
  -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -Djava.awt.headless=true -Dlog4j2.configurationFile="$node_dir/log4j2.properties" \
  -cp "$libs/*" kafka.Kafka "$node_dir/server.properties" \
  >"$node_dir/stdout.log" 2>&1 </dev/null &
echo $! >"$node_dir/kafka.pid"
for _ in $(seq 1 600); do
  if grep -q "Kafka Server started" "$node_dir/server.log" 2>/dev/null && port_open "$host" "$port"; then
    cat "$node_dir/kafka.pid"
    exit 0
  fi
  pid_alive "$node_dir/kafka.pid" || die "kafka node $node_id exited (see $node_dir/server.log, $node_dir/stdout.log)"
  sleep 0.1
done
die "kafka node $node_id did not start within 60 s (see $node_dir/server.log)"
