#!/usr/bin/python3
"""Parses a message with Python's email package under policy.strict (any defect is an
error) and prints its structure as JSON: the headers asked for and, for every leaf part,
its content type, disposition, filename and decoded content (text) or size (binary).

Usage: mime-check.py MESSAGE_FILE [HEADER ...]
Exit status 1 when the message does not parse strictly.
"""
import email
import email.policy
import json
import sys


def main(argv):
    data = open(argv[1], "rb").read()
    try:
        message = email.message_from_bytes(data, policy=email.policy.strict)
        parts = []
        for part in message.walk():
            if part.is_multipart():
                parts.append({"multipart": part.get_content_type()})
                continue
            entry = {
                "type": part.get_content_type(),
                "disposition": part.get_content_disposition(),
                "filename": part.get_filename(),
                "content_id": part.get("Content-ID"),
            }
            content = part.get_content()
            if isinstance(content, str):
                entry["text"] = content
            else:
                entry["size"] = len(content)
            parts.append(entry)
        headers = {name: [str(v) for v in message.get_all(name, [])] for name in argv[2:]}
        if message.defects:
            raise ValueError(f"defects: {message.defects}")
    except Exception as error:  # strict parsing raises on any defect
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 1
    print(json.dumps({"headers": headers, "parts": parts}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
