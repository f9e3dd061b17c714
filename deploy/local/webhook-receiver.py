#!/usr/bin/env python3
"""A customer's webhook endpoint, for the tests.

Verifies every request with the Standard Webhooks reference library (`standardwebhooks`
from PyPI) against the endpoint secrets given, checks that the same request with one
byte of its body changed fails verification, and appends one JSON line per request to
OUT: {"verified": index of the secret that verified it or null, "tamper_rejected": bool,
"webhook_id": ..., "events": [...]}. While the file FAIL_FLAG exists it answers 500 (and
records nothing). It prints "listening" once it accepts connections.

usage: webhook-receiver.py PORT OUT FAIL_FLAG SECRET[,SECRET...]
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

port, out_path, fail_flag = int(sys.argv[1]), sys.argv[2], sys.argv[3]
hooks = [Webhook(secret) for secret in sys.argv[4].split(",")]


def verify(body, headers):
    """(index of the secret that verifies, payload) or (None, None)."""
    for index, hook in enumerate(hooks):
        try:
            return index, hook.verify(body, headers)
        except WebhookVerificationError:
            continue
    return None, None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if os.path.exists(fail_flag):
            self.send_response(500)
            self.end_headers()
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        index, payload = verify(body, headers)
        middle = len(body) // 2
        tampered = body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1:]
        tamper_rejected = verify(tampered, headers)[0] is None
        record = {
            "verified": index,
            "tamper_rejected": tamper_rejected,
            "webhook_id": headers.get("webhook-id"),
            "events": payload["data"]["events"] if payload else [],
        }
        with open(out_path, "a") as out:
            out.write(json.dumps(record) + "\n")
        self.send_response(200 if index is not None else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("listening", flush=True)
server.serve_forever()
