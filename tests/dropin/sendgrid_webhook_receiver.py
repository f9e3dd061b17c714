"""A receiver written for SendGrid's Event Webhook, for the drop-in test: it verifies each
request with the helper SendGrid publishes for its signature (`sendgrid`'s
`sendgrid.helpers.eventwebhook.EventWebhook`, PyPI, pinned in
deploy/local/install-packages.sh) and the endpoint's public key, checks that the same
request with one byte of its body changed fails, and appends one JSON line per request
to OUT: {"verified": bool, "tamper_rejected": bool, "events": [...]}. It answers 200 when
verified, 403 otherwise, and prints "listening" once it accepts connections.

usage: sendgrid_webhook_receiver.py PORT OUT PUBLIC_KEY
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader

port, out_path, public_key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
webhook = EventWebhook()
key = webhook.convert_public_key_to_ecdsa(public_key)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        signature = self.headers.get(EventWebhookHeader.SIGNATURE)
        timestamp = self.headers.get(EventWebhookHeader.TIMESTAMP)
        verified = bool(signature and timestamp) and webhook.verify_signature(
            body, signature, timestamp, key
        )
        middle = len(body) // 2
        tampered = body[:middle] + ("x" if body[middle] != "x" else "y") + body[middle + 1 :]
        tamper_rejected = not webhook.verify_signature(tampered, signature or "", timestamp or "", key)
        record = {
            "verified": verified,
            "tamper_rejected": tamper_rejected,
            "events": json.loads(body) if verified else [],
        }
        with open(out_path, "a") as out:
            out.write(json.dumps(record) + "\n")
        self.send_response(200 if verified else 403)
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("listening", flush=True)
server.serve_forever()
