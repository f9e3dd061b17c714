#!/usr/bin/env bash
# Installs, from Debian packages, everything Sendmill's local services, build and tests
# need. Idempotent: installs only what is missing, and refreshes the package lists once.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

packages=(
  # build: rdkafka's bundled librdkafka and aws-lc need a C toolchain
  gcc g++ make cmake pkg-config libssl-dev zlib1g-dev perl
  # services
  redis-server postgresql postgresql-client clickhouse-server clickhouse-client
  dnsmasq-base postfix
  # postfix's SASL client (PLAIN, LOGIN) for the submission test's relaying postfix
  libsasl2-modules
  # test peers and tools: dkimpy verifies signatures, kcat reads topics, swaks/curl poke
  python3 python3-dkim python3-dnspython kcat swaks curl ca-certificates
  # backtraces from the core dump of a test binary that crashed (diagnose.sh)
  gdb file
  # instruction counts per message (deploy/local/callgrind.sh)
  valgrind
  # swaks's --tls (the submission test)
  libnet-ssleay-perl
  # PyPI test tools (standardwebhooks verifies our webhook signatures) live in a venv
  python3-venv
  # the dashboard test drives headless Chromium through playwright-core (npm)
  chromium
  # the image test builds deploy/Containerfile on a debootstrap base and runs it (runc:
  # crun cannot run containers on this machine's hybrid cgroups)
  podman runc debootstrap
)
# Node.js and npm from Debian unless a Node.js (which brings its own npm) is installed.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  # postfix asks how to configure itself; we only want its binaries (smtp-sink, postfix
  # for per-recipient tests), never a system MTA listening on :25.
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "all Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  # Debian's own cargo is older than the crates Sendmill builds with; a rustup toolchain
  # (>= the workspace rust-version) must already be on the machine.
  die "no cargo on PATH: install a Rust toolchain >= 1.95 (rustup) and re-run"
fi

# Apache Kafka's broker (KRaft) from Maven Central: kafka/pom.xml names the pinned
# release and a log4j2 binding; the jars are cached under $SENDMILL_LOCAL_DIR/kafka/libs.
command -v java >/dev/null 2>&1 || die "no java on PATH: install OpenJDK 17 (Kafka's broker runs on it)"
command -v mvn >/dev/null 2>&1 || die "no mvn on PATH: install Maven (it fetches Kafka's jars)"
kafka_libs=$SENDMILL_LOCAL_DIR/kafka/libs
kafka_stamp=$kafka_libs/.pom.sha256
kafka_pom=$(cd "$(dirname "$0")" && pwd)/kafka/pom.xml
if [ "$(cat "$kafka_stamp" 2>/dev/null)" != "$(sha256sum <"$kafka_pom")" ]; then
  log "fetching Apache Kafka's jars from Maven Central into $kafka_libs"
  rm -rf "$kafka_libs"
  mkdir -p "$kafka_libs"
  mvn -B -q -f "$kafka_pom" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DoutputDirectory="$kafka_libs" -DincludeScope=runtime
  sha256sum <"$kafka_pom" >"$kafka_stamp"
fi

# cargo-fuzz (crates.io) builds and runs the libFuzzer targets under fuzz/.
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz 0.13.2" ]; then
  log "installing cargo-fuzz from crates.io"
  cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi

# PyPI packages the tests use, in a venv beside the services (Debian's python3 refuses
# system-wide pip installs). Pinned so that a test run is repeatable.
# standardwebhooks verifies webhook signatures; schemathesis fuzzes the HTTP APIs from
# their OpenAPI documents; kubernetes-validate checks deploy/k8s against Kubernetes'
# schemas (deploy/k8s/validate.py); sendgrid and boto3 are the official SendGrid and AWS
# clients the drop-in test (tests/tests/dropin.rs) sends with.
venv=$SENDMILL_LOCAL_DIR/venv
if ! "$venv/bin/python" -c 'import standardwebhooks' >/dev/null 2>&1 \
  || [ "$("$venv/bin/python" -c 'import sendgrid, boto3; print(sendgrid.__version__, boto3.__version__)' 2>/dev/null)" != "6.12.5 1.44.8" ] \
  || [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version 4.32.5" ] \
  || [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "1.34.1" ]; then
  log "installing PyPI test tools into $venv"
  mkdir -p "$SENDMILL_LOCAL_DIR"
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check standardwebhooks==1.0.0 \
    schemathesis==4.32.5 kubernetes-validate==1.34.1 sendgrid==6.12.5 boto3==1.44.8
fi

# Go (on the machine) builds deploy/tools, which renders deploy/k8s and deploy/compose
# with kustomize's and compose-go's own libraries; the modules and KEDA's CRDs come from
# the Go module proxy, pinned in deploy/tools/go.mod and tests/tests/deploy.rs.
command -v go >/dev/null 2>&1 || die "go is missing: the deploy tests build deploy/tools with it"
(cd "$(dirname "$0")/../tools" && go mod download) || die "cannot fetch deploy/tools' Go modules"
# KEDA's CRDs, which tests/tests/deploy.rs validates ScaledObjects against (its KEDA).
go mod download github.com/kedacore/keda/v2@v2.21.0 || die "cannot fetch KEDA's CRDs"

# playwright-core drives Debian's chromium (it cannot download browsers here);
# @sendgrid/mail is the official SendGrid client the drop-in test sends with.
node_dir=$SENDMILL_LOCAL_DIR/node
if [ ! -d "$node_dir/node_modules/playwright-core" ] \
  || [ "$(node -p 'require(process.argv[1]).version' "$node_dir/node_modules/@sendgrid/mail/package.json" 2>/dev/null)" != "8.1.6" ]; then
  log "installing playwright-core and @sendgrid/mail into $node_dir"
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm install --silent --no-audit --no-fund playwright-core@1.49.1 \
    @sendgrid/mail@8.1.6 @sendgrid/client@8.1.6 >/dev/null)
fi
