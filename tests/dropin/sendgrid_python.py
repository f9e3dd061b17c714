"""Sends through Sendmill's SendGrid v3 drop-in with SendGrid's official Python client
(PyPI `sendgrid`, pinned in deploy/local/install-packages.sh), changed only in host and
key. Argument: a JSON object with host, key, from, to (4 addresses) and template_id.
Prints a JSON object: per case its status, X-Message-Id and error body."""

import base64
import json
import sys
import time

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Attachment,
    BatchId,
    SendAt,
    Category,
    ContentId,
    CustomArg,
    Disposition,
    FileContent,
    FileName,
    FileType,
    From,
    Mail,
    Personalization,
    Substitution,
    To,
)

cfg = json.loads(sys.argv[1])
client = SendGridAPIClient(api_key=cfg["key"], host=cfg["host"])
out = {}


def record(name, send):
    try:
        response = send()
        out[name] = {
            "status": response.status_code,
            "message_id": response.headers.get("X-Message-Id"),
            "body": response.body.decode() if response.body else "",
        }
    except HTTPError as error:
        out[name] = {"status": error.status_code, "body": error.body.decode()}


# Plain: one recipient, text and HTML, a category and a custom arg.
plain = Mail(
    from_email=From(cfg["from"], "Drop-in Test"),
    to_emails=cfg["to"][0],
    subject="Plain via the sendgrid client",
    html_content="<p>Hello from the <b>sendgrid</b> client, {{not a variable}}</p>",
    plain_text_content="Hello from the sendgrid client",
)
plain.category = Category("dropin")
plain.custom_arg = CustomArg("order", "42")
record("plain", lambda: client.send(plain))

# Templated: a dynamic template (a stored Sendmill template) with its data.
templated = Mail(from_email=cfg["from"], to_emails=cfg["to"][1])
templated.template_id = cfg["template_id"]
templated.dynamic_template_data = {"name": "Ada", "plan": "pro"}
record("templated", lambda: client.send(templated))

# Two personalizations with substitutions, an attachment and an inline image; the
# second personalization is held until its send_at.
multi = Mail(
    from_email=cfg["from"],
    subject="Report for -name-",
    plain_text_content="Dear -name-, the report is attached.",
    html_content='<p>Dear -name-,</p><img src="cid:logo">',
)
for i, address in enumerate(cfg["to"][2:4]):
    p = Personalization()
    p.add_to(To(address))
    p.add_substitution(Substitution("-name-", f"Person {i}"))
    if i == 1:
        p.send_at = int(time.time()) + 3
    multi.add_personalization(p)
pdf = b"%PDF-1.4\n% drop-in test\n" + bytes(range(256)) * 8
png = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
multi.attachment = [
    Attachment(
        FileContent(base64.b64encode(pdf).decode()),
        FileName("report.pdf"),
        FileType("application/pdf"),
        Disposition("attachment"),
    ),
    Attachment(
        FileContent(base64.b64encode(png).decode()),
        FileName("logo.png"),
        FileType("image/png"),
        Disposition("inline"),
        ContentId("logo"),
    ),
]
record("multi", lambda: client.send(multi))

# Scheduled with a batch id, then the batch's scheduled sends cancelled.
batch = json.loads(client.client.mail.batch.post().body)["batch_id"]
out["batch_valid"] = client.client.mail.batch._(batch).get().status_code
later = Mail(
    from_email=cfg["from"],
    to_emails=cfg["to"][0],
    subject="Never sent",
    plain_text_content="This send is cancelled before its send_at.",
)
later.batch_id = BatchId(batch)
later.send_at = SendAt(int(time.time()) + 3600)
record("scheduled", lambda: client.send(later))
record(
    "cancel",
    lambda: client.client.user.scheduled_sends.post(
        request_body={"batch_id": batch, "status": "cancel"}
    ),
)
record("after_cancel", lambda: client.send(later))
record(
    "pause",
    lambda: client.client.user.scheduled_sends.post(
        request_body={"batch_id": batch, "status": "pause"}
    ),
)
out["cancelled_batches"] = json.loads(client.client.user.scheduled_sends.get().body)
out["batch"] = batch

# Malformed: an address that is not one, through the client's raw request path.
record(
    "malformed",
    lambda: client.client.mail.send.post(
        request_body={
            "from": {"email": cfg["from"]},
            "personalizations": [{"to": [{"email": "not an address"}]}],
            "subject": "x",
            "content": [{"type": "text/plain", "value": "x"}],
        }
    ),
)
# A bad key.
record(
    "unauthorized",
    lambda: SendGridAPIClient(api_key="sm_not-a-key", host=cfg["host"]).send(plain),
)

print(json.dumps(out))
