#!/usr/bin/env bash
# postfix-instance.sh DIR ADDRESS SETTINGS: a postfix of a test's own, with its config and
# queue in DIR and smtpd on ADDRESS:25, SETTINGS (main.cf lines) added to the local
# defaults (deploy/local/lib.sh postfix_start). Stop it with `postfix -c DIR stop`.
# The submission test starts one that relays through Sendmill with SASL.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
[ $# -eq 3 ] || die "usage: postfix-instance.sh DIR ADDRESS SETTINGS"
postfix_start "$1" "$2" <<<"$3"
