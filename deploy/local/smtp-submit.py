#!/usr/bin/python3
"""One SMTP submission session with Python's smtplib, as applications make them.

Reads a JSON session on stdin and prints what the server answered, as JSON:

    {"host": "127.0.0.1", "port": 587,
     "tls": "starttls" | "implicit" | "none",
     "user": "apikey", "password": "<API key>",   # optional: no AUTH without them
     "auth": "smtplib" | "raw-plain",             # raw-plain: AUTH PLAIN sent as-is,
                                                  #   even without TLS (to see refusals)
     "from": "a@b.test", "to": ["c@d.test"],
     "message": "<RFC 5322 text, CRLF or LF>",
     "mail_options": ["SIZE=123"],
     "parallel_auth": 3}                          # optional: only authenticate, on this
                                                  #   many sessions held open at once

    -> {"ehlo": [code, text], "auth": [code, text], "mail": [code, text],
        "rcpt": [[code, text], ...], "data": [code, text]}
       or, with parallel_auth, {"auths": [[code, text], ...]} in the order opened.

A step that was not reached is absent. Used by the submission tests
(tests/tests/submission.rs) and by hand.
"""
import base64
import json
import smtplib
import ssl
import sys


def answer(code, text):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [code, text]


def parallel_auth(spec, context):
    held, auths = [], []
    for _ in range(spec["parallel_auth"]):
        client = smtplib.SMTP(spec["host"], spec["port"], timeout=60)
        client.ehlo("client.test")
        client.starttls(context=context)
        client.ehlo("client.test")
        try:
            auths.append(answer(*client.login(spec["user"], spec["password"])))
        except smtplib.SMTPResponseException as e:
            auths.append(answer(e.smtp_code, e.smtp_error))
        held.append(client)
    for client in held:
        client.close()
    return {"auths": auths}


def main():
    spec = json.load(sys.stdin)
    out = {}
    context = ssl._create_unverified_context()  # the tests' certificate is self-made
    if "parallel_auth" in spec:
        print(json.dumps(parallel_auth(spec, context)))
        return
    if spec.get("tls") == "implicit":
        client = smtplib.SMTP_SSL(spec["host"], spec["port"], context=context, timeout=60)
    else:
        client = smtplib.SMTP(spec["host"], spec["port"], timeout=60)
    try:
        out["ehlo"] = answer(*client.ehlo("client.test"))
        if spec.get("tls") == "starttls":
            out["starttls"] = answer(*client.starttls(context=context))
            out["ehlo"] = answer(*client.ehlo("client.test"))
        if "password" in spec:
            if spec.get("auth") == "raw-plain":
                token = base64.b64encode(
                    f"\0{spec['user']}\0{spec['password']}".encode()
                ).decode()
                out["auth"] = answer(*client.docmd("AUTH", "PLAIN " + token))
            else:
                try:
                    out["auth"] = answer(*client.login(spec["user"], spec["password"]))
                except smtplib.SMTPResponseException as e:
                    out["auth"] = answer(e.smtp_code, e.smtp_error)
        out["mail"] = answer(*client.mail(spec["from"], spec.get("mail_options", [])))
        out["rcpt"] = [answer(*client.rcpt(to)) for to in spec["to"]]
        if out["mail"][0] == 250 and any(r[0] == 250 for r in out["rcpt"]):
            message = spec["message"].encode("utf-8")
            try:
                out["data"] = answer(*client.data(message))
            except smtplib.SMTPResponseException as e:
                out["data"] = answer(e.smtp_code, e.smtp_error)
        try:
            client.quit()
        except smtplib.SMTPServerDisconnected:
            pass
    except smtplib.SMTPServerDisconnected as e:
        out["disconnected"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
