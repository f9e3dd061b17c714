#!/usr/bin/python3
"""Verifies the DKIM signatures of a message with dkimpy (Debian's python3-dkim).

Usage: dkim-verify.py MESSAGE_FILE [--dns HOST:PORT] [--txt NAME=VALUE ...]

Keys come from the DNS server given (default: dnsmasq on 127.0.0.1:5353), or from
--txt records given on the command line. Lines an smtp-sink dump prepends (X-Client-*,
X-Helo-*, X-Mail-*, X-Rcpt-*) are unsigned headers and do not affect verification.
Exit status 0 when every signature verifies, 1 otherwise; prints one line per signature.
"""
import sys

import dkim
import dns.resolver


def main(argv):
    path = argv[1]
    server, port = "127.0.0.1", 5353
    records = {}
    args = argv[2:]
    while args:
        flag = args.pop(0)
        if flag == "--dns":
            server, port = args.pop(0).rsplit(":", 1)
            port = int(port)
        elif flag == "--txt":
            name, value = args.pop(0).split("=", 1)
            records[name.rstrip(".") + "."] = value.encode()
        else:
            raise SystemExit(f"unknown argument {flag}")

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server]
    resolver.port = port

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        if records:
            return records.get(name.rstrip(".") + ".")
        answer = resolver.resolve(name, "TXT", lifetime=timeout)
        return b"".join(b"".join(r.strings) for r in answer)

    message = open(path, "rb").read()
    # smtp-sink dumps use LF line ends; DKIM is computed over CRLF.
    if b"\r\n" not in message:
        message = message.replace(b"\n", b"\r\n")
    verifier = dkim.DKIM(message)
    count = len([h for h in verifier.headers if h[0].lower() == b"dkim-signature"])
    if count == 0:
        print("no DKIM-Signature header")
        return 1
    ok = True
    for index in range(count):
        try:
            passed = verifier.verify(idx=index, dnsfunc=dnsfunc)
            detail = ""
        except dkim.DKIMException as error:
            passed, detail = False, f" ({error})"
        print(f"signature {index}: {'pass' if passed else 'FAIL'}{detail}")
        ok = ok and passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
