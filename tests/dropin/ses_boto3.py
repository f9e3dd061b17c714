"""Sends through Sendmill's SES v2 drop-in with AWS's official Python SDK (PyPI `boto3`,
pinned in deploy/local/install-packages.sh), an `sesv2` client changed only in its
endpoint_url and credentials. Argument: a JSON object with endpoint, access_key_id,
secret, from, to (4 addresses) and template. Prints per case the MessageId or the error
code, message and HTTP status."""

import json
import sys

import boto3
from botocore.exceptions import ClientError

cfg = json.loads(sys.argv[1])


def client(secret):
    return boto3.client(
        "sesv2",
        endpoint_url=cfg["endpoint"],
        region_name="eu-west-1",
        aws_access_key_id=cfg["access_key_id"],
        aws_secret_access_key=secret,
    )


ses = client(cfg["secret"])
out = {}


def record(name, send):
    try:
        out[name] = {"message_id": send()["MessageId"]}
    except ClientError as error:
        out[name] = {
            "code": error.response["Error"]["Code"],
            "message": error.response["Error"]["Message"],
            "status": error.response["ResponseMetadata"]["HTTPStatusCode"],
        }


record(
    "simple",
    lambda: ses.send_email(
        FromEmailAddress=f"SES Drop-in <{cfg['from']}>",
        Destination={"ToAddresses": [cfg["to"][0], cfg["to"][3]]},
        Content={
            "Simple": {
                "Subject": {"Data": "Simple via boto3", "Charset": "UTF-8"},
                "Body": {
                    "Text": {"Data": "Hello from boto3"},
                    "Html": {"Data": "<p>Hello from <b>boto3</b></p>"},
                },
            }
        },
        EmailTags=[{"Name": "flow", "Value": "simple"}],
    ),
)
raw = (
    f"From: Raw Sender <{cfg['from']}>\r\n"
    f"To: {cfg['to'][1]}\r\n"
    "Subject: Raw via boto3\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "Hello from a raw message sent with boto3.\r\n"
).encode()
record(
    "raw",
    lambda: ses.send_email(
        Destination={"ToAddresses": [cfg["to"][1]]}, Content={"Raw": {"Data": raw}}
    ),
)
record(
    "template",
    lambda: ses.send_email(
        FromEmailAddress=cfg["from"],
        Destination={"ToAddresses": [cfg["to"][2]]},
        Content={
            "Template": {
                "TemplateName": cfg["template"],
                "TemplateData": json.dumps({"name": "Grace", "plan": "team"}),
            }
        },
    ),
)
record(
    "malformed",
    lambda: ses.send_email(
        FromEmailAddress="not an address",
        Destination={"ToAddresses": [cfg["to"][0]]},
        Content={"Simple": {"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}}},
    ),
)
record(
    "missing_template",
    lambda: ses.send_email(
        FromEmailAddress=cfg["from"],
        Destination={"ToAddresses": [cfg["to"][0]]},
        Content={"Template": {"TemplateName": "no-such-template", "TemplateData": "{}"}},
    ),
)
record(
    "wrong_secret",
    lambda: client(cfg["secret"] + "x").send_email(
        FromEmailAddress=cfg["from"],
        Destination={"ToAddresses": [cfg["to"][0]]},
        Content={"Simple": {"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}}},
    ),
)
print(json.dumps(out))
