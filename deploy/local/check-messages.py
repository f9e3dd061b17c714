#!/usr/bin/python3
"""Checks every message file in a directory, for property tests that render many:
each must parse under Python's email policy.strict, and each DKIM signature must verify
with dkimpy. Prints one JSON object per file: {"file", "headers": [names in order],
"subject", "from_name", "dkim": [true/false per signature], "error"}.

Usage: check-messages.py DIR --txt NAME=VALUE [--txt NAME=VALUE ...]
"""
import email
import email.policy
import json
import os
import sys

import dkim


def main(argv):
    directory = argv[1]
    records = {}
    args = argv[2:]
    while args:
        flag = args.pop(0)
        if flag != "--txt":
            raise SystemExit(f"unknown argument {flag}")
        name, value = args.pop(0).split("=", 1)
        records[name.rstrip(".") + "."] = value.encode()

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return records.get(name.rstrip(".") + ".")

    for file in sorted(os.listdir(directory)):
        data = open(os.path.join(directory, file), "rb").read()
        result = {"file": file}
        try:
            message = email.message_from_bytes(data, policy=email.policy.strict)
            for part in message.walk():
                if not part.is_multipart():
                    part.get_content()
            if message.defects:
                raise ValueError(f"defects: {message.defects}")
            result["headers"] = list(message.keys())
            result["subject"] = str(message["Subject"])
            result["from_name"] = message["From"].addresses[0].display_name
            verifier = dkim.DKIM(data)
            count = len([h for h in verifier.headers if h[0].lower() == b"dkim-signature"])
            verdicts = []
            for index in range(count):
                try:
                    verdicts.append(bool(verifier.verify(idx=index, dnsfunc=dnsfunc)))
                except dkim.DKIMException:
                    verdicts.append(False)
            result["dkim"] = verdicts
        except Exception as error:
            result["error"] = f"{type(error).__name__}: {error}"
        print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
