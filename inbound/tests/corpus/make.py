#!/usr/bin/env python3
"""Writes the inbound classification corpus: returned mail in the formats of the major MTAs
and mailbox providers, auto-replies and junk, each with what it must be classified as
(expected.toml). Written for Sendmill from the RFCs (3464, 3834, 5965, 6533, 6591) and the
providers' published descriptions of their formats; every address, host and IP is made up
(.test domains, RFC 5737 addresses). Run it to regenerate after changing a case:

    python3 inbound/tests/corpus/make.py
"""
import os
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = []
SENDER_DOMAIN = "shop.test"
RETURN_DOMAIN = "bounces.shop.test"


def ids(n):
    """A stable message id, VERP address and Message-ID for case n."""
    u = uuid.UUID(int=(0x0193A0B0C0D0700080000000000000 << 8) + n)
    verp = f"b+{u.hex}-{(n * 0x9E3779B97F4A7C15) % (1 << 64):016x}@{RETURN_DOMAIN}"
    return u, verp, f"<{u}@{SENDER_DOMAIN}>"


def original(n, to, subject="Your November offers", full=True):
    u, verp, mid = ids(n)
    head = (
        f"Return-Path: <{verp}>\r\n"
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={SENDER_DOMAIN}; s=sm1;\r\n"
        f" h=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
        f" b=dGVzdA==\r\n"
        f"From: Shop <news@{SENDER_DOMAIN}>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, 30 Nov 2026 09:00:00 +0000\r\n"
        f"Message-ID: {mid}\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
    )
    if not full:
        return head
    return head + "\r\nHello, here are this month's offers.\r\n"


def case(name, raw, kind, fmt, recipient=None, status=None, category=None, mail_from="",
         message_id=None, verp=None, note=None):
    CASES.append(dict(file=f"{len(CASES) + 1:02d}-{name}.eml", raw=raw, kind=kind, format=fmt,
                      recipient=recipient, status=status, category=category, mail_from=mail_from,
                      message_id=message_id, verp=verp))


def dsn(n, *, reporting, from_hdr, subject, human, recipients, orig_to, headers_only=False,
        extra_headers="", global_dsn=False, per_message_extra="", human_type="text/plain",
        human_cte=None):
    """An RFC 3464 multipart/report; recipients: [(final, action, status, remote, diag)]."""
    b = f"=_sm_{n:04d}_report"
    fields = f"Reporting-MTA: dns; {reporting}\r\n{per_message_extra}Arrival-Date: Mon, 30 Nov 2026 09:00:02 +0000\r\n"
    for final, action, status, remote, diag in recipients:
        fields += "\r\n"
        fields += f"Final-Recipient: {'utf-8' if global_dsn else 'rfc822'}; {final}\r\n"
        fields += f"Original-Recipient: rfc822;{final}\r\n" if not global_dsn else ""
        fields += f"Action: {action}\r\n"
        if status:
            fields += f"Status: {status}\r\n"
        if remote:
            fields += f"Remote-MTA: dns; {remote}\r\n"
        if diag:
            fields += f"Diagnostic-Code: {diag}\r\n"
        if action == "delayed":
            fields += "Will-Retry-Until: Fri, 4 Dec 2026 09:00:02 +0000\r\n"
    ds_type = "message/global-delivery-status" if global_dsn else "message/delivery-status"
    orig_type = "text/rfc822-headers" if headers_only else "message/rfc822"
    human_part = f"Content-Type: {human_type}; charset=us-ascii\r\n"
    if human_cte:
        human_part += f"Content-Transfer-Encoding: {human_cte}\r\n"
    return (
        f"Return-Path: <>\r\n"
        f"Received: from {reporting} (localhost [127.0.0.1]) by {reporting}; Mon, 30 Nov 2026 09:00:03 +0000\r\n"
        f"From: {from_hdr}\r\n"
        f"To: {ids(n)[1]}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, 30 Nov 2026 09:00:03 +0000\r\n"
        f"Message-ID: <{n:04d}.dsn@{reporting}>\r\n"
        f"Auto-Submitted: auto-replied\r\n"
        f"{extra_headers}"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{b}\"\r\n"
        f"\r\n"
        f"This is a MIME-encapsulated message.\r\n\r\n"
        f"--{b}\r\n{human_part}\r\n{human}\r\n\r\n"
        f"--{b}\r\nContent-Type: {ds_type}\r\n\r\n{fields}\r\n"
        f"--{b}\r\nContent-Type: {orig_type}\r\n\r\n{original(n, orig_to, full=not headers_only)}\r\n"
        f"--{b}--\r\n"
    )


def plain_bounce(n, *, from_hdr, subject, body, extra_headers="", null_sender=True):
    return (
        ("Return-Path: <>\r\n" if null_sender else "")
        + f"From: {from_hdr}\r\n"
        f"To: {ids(n)[1]}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, 30 Nov 2026 09:00:03 +0000\r\n"
        f"Message-ID: <{n:04d}.bounce@mx.example.test>\r\n"
        f"{extra_headers}"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n"
        f"\r\n{body}"
    )


def arf(n, *, reporter, user_agent, feedback_type="abuse", rcpt=None, headers_only=False,
        extra_fields="", subject="Feedback report", to_hdr=None, orig_to="redacted@example.test"):
    b = f"=_arf_{n:04d}"
    _, verp, _ = ids(n)
    fields = (
        f"Feedback-Type: {feedback_type}\r\n"
        f"User-Agent: {user_agent}\r\n"
        f"Version: 1\r\n"
        f"Original-Mail-From: <{verp}>\r\n"
        + (f"Original-Rcpt-To: <{rcpt}>\r\n" if rcpt else "")
        + "Arrival-Date: Mon, 30 Nov 2026 09:00:00 +0000\r\n"
        f"Reporting-MTA: dns; {reporter}\r\n"
        f"Source-IP: 192.0.2.25\r\n"
        f"Reported-Domain: {SENDER_DOMAIN}\r\n"
        f"{extra_fields}"
    )
    orig_type = "text/rfc822-headers" if headers_only else "message/rfc822"
    return (
        f"From: <feedback@{reporter}>\r\n"
        f"To: {to_hdr or 'fbl@' + RETURN_DOMAIN}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{n:04d}.arf@{reporter}>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=feedback-report; boundary=\"{b}\"\r\n"
        f"\r\n"
        f"--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is an email abuse report for an email message received from IP 192.0.2.25.\r\n\r\n"
        f"--{b}\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n"
        f"--{b}\r\nContent-Type: {orig_type}\r\nContent-Disposition: inline\r\n\r\n"
        f"{original(n, orig_to, full=not headers_only)}\r\n"
        f"--{b}--\r\n"
    )


def reply(n, *, subject, body="", headers="", from_hdr="Ada Lovelace <ada@mail.example.test>",
          content_type="text/plain; charset=utf-8"):
    _, verp, mid = ids(n)
    return (
        f"Return-Path: <ada@mail.example.test>\r\n"
        f"From: {from_hdr}\r\n"
        f"To: {verp}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, 30 Nov 2026 09:01:00 +0000\r\n"
        f"Message-ID: <{n:04d}.reply@mail.example.test>\r\n"
        f"In-Reply-To: {mid}\r\n"
        f"{headers}"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n"
        f"\r\n{body}\r\n"
    )


def verp_of(n):
    return ids(n)[1]


def mid_of(n):
    return ids(n)[2]


# ---------------------------------------------------------------- RFC 3464 DSNs
POSTFIX_HUMAN = ("This is the mail system at host mail.relay.example.test.\r\n\r\n"
                 "I'm sorry to have to inform you that your message could not\r\n"
                 "be delivered to one or more recipients. It's attached below.\r\n\r\n"
                 "                   The mail system\r\n\r\n{detail}")


def postfix_dsn(n, rcpt, status, remote, diag, action="failed", subject="Undelivered Mail Returned to Sender", **kw):
    return dsn(n, reporting="mail.relay.example.test",
               from_hdr="MAILER-DAEMON@mail.relay.example.test (Mail Delivery System)",
               subject=subject, human=POSTFIX_HUMAN.format(detail=f"<{rcpt}>: {diag}"),
               recipients=[(rcpt, action, status, remote, diag and ("smtp; " + diag if diag[:1].isdigit() else "X-Postfix; " + diag))],
               orig_to=rcpt, **kw)


n = 1
r = "ada.unknown@gmail.test"
case("postfix-user-unknown", postfix_dsn(n, r, "5.1.1", "gmail-smtp-in.l.google.test",
     "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. https://support.google.test/mail/?p=NoSuchUser"),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "full@mail.example.test"
case("postfix-mailbox-full", postfix_dsn(n, r, "5.2.2", "mx.mail.example.test", "552 5.2.2 <full@mail.example.test>: Mailbox full"),
     "failed", "rfc3464", r, "5.2.2", "mailbox_full", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "ada@nx-domain.test"
case("postfix-host-not-found", postfix_dsn(n, r, "5.4.4", None, "Host or domain name not found. Name service error for name=nx-domain.test type=A: Host not found"),
     "failed", "rfc3464", r, "5.4.4", "bad_domain", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "slow@mail.example.test"
case("postfix-delayed", postfix_dsn(n, r, "4.4.1", None, "connect to mx.mail.example.test[192.0.2.10]:25: Connection timed out", action="delayed",
     subject="Delayed Mail (still being retried)"),
     "delayed", "rfc3464", r, "4.4.1", "routing", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "someone@relay-denied.test"
case("postfix-relay-denied", postfix_dsn(n, r, "5.7.1", "mx.relay-denied.test", "554 5.7.1 <someone@relay-denied.test>: Relay access denied"),
     "failed", "rfc3464", r, "5.7.1", "policy", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "bob@spamfilter.test"
case("postfix-spam-rejected", postfix_dsn(n, r, "5.7.1", "mx.spamfilter.test", "550 5.7.1 Message rejected as spam by Content Filtering."),
     "failed", "rfc3464", r, "5.7.1", "policy", message_id=mid_of(n), verp=verp_of(n))

GMAIL_FROM = "Mail Delivery Subsystem <mailer-daemon@googlemail.test>"
GMAIL_HUMAN = "** Address not found **\r\n\r\nYour message wasn't delivered to {r} because the address couldn't be found, or is unable to receive mail.\r\n\r\nThe response from the remote server was:\r\n{d}\r\n"


def gmail_dsn(n, r, status, diag, action="failed", subject="Delivery Status Notification (Failure)"):
    return dsn(n, reporting="mail-sor-f41.google.test", from_hdr=GMAIL_FROM, subject=subject,
               human=GMAIL_HUMAN.format(r=r, d=diag),
               recipients=[(r, action, status, "gmail-smtp-in.l.google.test", "smtp; " + diag)],
               orig_to=r, per_message_extra="X-Google-Original-From: news@shop.test\r\n",
               human_type="text/plain")


n += 1; r = "nobody@gmail.test"
case("gmail-no-such-user", gmail_dsn(n, r, "5.1.1", "550 5.1.1 The email account that you tried to reach does not exist. Please try\r\n 5.1.1 double-checking the recipient's email address for typos or\r\n 5.1.1 unnecessary spaces. https://support.google.test/mail/?p=NoSuchUser"),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "hoarder@gmail.test"
case("gmail-over-quota", gmail_dsn(n, r, "5.2.2", "552 5.2.2 The email account that you tried to reach is over quota. Please direct\r\n 5.2.2 the recipient to https://support.google.test/mail/?p=OverQuotaPerm"),
     "failed", "rfc3464", r, "5.2.2", "mailbox_full", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "strict@gmail.test"
case("gmail-unauthenticated", gmail_dsn(n, r, "5.7.26", "550 5.7.26 This mail is unauthenticated, which poses a security risk to the\r\n 5.7.26 sender and Gmail users, and has been blocked."),
     "failed", "rfc3464", r, "5.7.26", "authentication", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "busy@gmail.test"
case("gmail-rate-limited-delay", gmail_dsn(n, r, "4.7.28", "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail originating\r\n 4.7.28 from your IP address. To protect our users from spam, mail sent from\r\n 4.7.28 your IP address has been temporarily rate limited.", action="delayed",
     subject="Delivery Status Notification (Delay)"),
     "delayed", "rfc3464", r, "4.7.28", "rate_limited", message_id=mid_of(n), verp=verp_of(n))

O365_FROM = "Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@outlook.test>"
O365_HUMAN = ("Your message to {r} couldn't be delivered.\r\n{r} wasn't found at outlook.test.\r\n\r\n"
              "Action Required\r\nUnknown To address\r\n\r\nDiagnostic information for administrators:\r\n\r\n"
              "Generating server: AM0PR01MB1234.eurprd01.prod.outlook.test\r\n\r\n{r}\r\nRemote Server returned '{d}'\r\n")


def o365_dsn(n, r, status, diag, action="failed", subject=None, remote="AM0PR01MB1234.eurprd01.prod.outlook.test"):
    return dsn(n, reporting="AM0PR01MB1234.eurprd01.prod.outlook.test", from_hdr="postmaster@outlook.test",
               subject=subject or "Undeliverable: Your November offers",
               human=O365_HUMAN.format(r=r, d=diag), human_type="text/plain",
               recipients=[(r, action, status, remote, "smtp; " + diag)], orig_to=r,
               extra_headers="X-MS-Exchange-Message-Is-Ndr:\r\nContent-Language: en-US\r\n")


n += 1; r = "gone@outlook.test"
case("o365-mailbox-unavailable", o365_dsn(n, r, "5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.test]"),
     "failed", "rfc3464", r, "5.5.0", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "left.company@contoso.test"
case("o365-recipient-not-found", o365_dsn(n, r, "5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
     "failed", "rfc3464", r, "5.1.10", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "denied@contoso.test"
case("o365-access-denied", o365_dsn(n, r, "5.4.1", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [SN1NAM02FT0012.eop-nam02.prod.protection.outlook.test]"),
     "failed", "rfc3464", r, "5.4.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "former@fabrikam.test"
case("exchange-recipnotfound", o365_dsn(n, r, "5.1.1", "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found", remote="EXCH01.fabrikam.test"),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "packed@fabrikam.test"
case("exchange-quota", o365_dsn(n, r, "5.2.2", "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded"),
     "failed", "rfc3464", r, "5.2.2", "mailbox_full", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "later@fabrikam.test"
case("exchange-delayed", o365_dsn(n, r, "4.4.7", "400 4.4.7 Message delayed", action="delayed", subject="Delivery delayed:Your November offers"),
     "delayed", "rfc3464", r, "4.4.7", "routing", message_id=mid_of(n), verp=verp_of(n))

YAHOO_FROM = "MAILER-DAEMON@yahoo.test"
n += 1; r = "noaccount@yahoo.test"
case("yahoo-no-account", dsn(n, reporting="sonic.mail.yahoo.test", from_hdr=YAHOO_FROM, subject="Failure Notice",
     human=f"Sorry, we were unable to deliver your message to the following address.\r\n\r\n<{r}>:\r\n554: delivery error: dd This user doesn't have a yahoo.test account ({r}) [0] - mta1234.mail.yahoo.test\r\n",
     recipients=[(r, "failed", "5.0.0", "mta7.am0.yahoodns.test", "smtp; 554 delivery error: dd This user doesn't have a yahoo.test account (noaccount@yahoo.test) [0] - mta1234.mail.yahoo.test")],
     orig_to=r), "failed", "rfc3464", r, "5.0.0", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "deactivated@aol.test"
case("aol-mailbox-not-found", dsn(n, reporting="sonic.mail.aol.test", from_hdr="MAILER-DAEMON@aol.test", subject="Failure Notice",
     human=f"Sorry, we were unable to deliver your message to the following address.\r\n\r\n<{r}>:\r\n552: 1 Requested mail action aborted, mailbox not found\r\n",
     recipients=[(r, "failed", "5.0.0", "mx-aol.mail.gm0.yahoodns.test", "smtp; 552 1 Requested mail action aborted, mailbox not found")],
     orig_to=r), "failed", "rfc3464", r, "5.0.0", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))


def sendmail_dsn(n, r, status, diag, action="failed", subject="Returned mail: see transcript for details", human=None, remote="mx.example.test"):
    return dsn(n, reporting="smtp.sendmail.example.test", from_hdr="Mail Delivery Subsystem <MAILER-DAEMON@smtp.sendmail.example.test>",
               subject=subject, human=human or f"The original message was received at Mon, 30 Nov 2026 09:00:00 GMT\r\nfrom localhost [127.0.0.1]\r\n\r\n   ----- The following addresses had permanent fatal errors -----\r\n<{r}>\r\n    (reason: {diag})\r\n",
               recipients=[(r, action, status, remote, diag and "SMTP; " + diag)], orig_to=r,
               per_message_extra="Received-From-MTA: DNS; localhost\r\n")


n += 1; r = "unknown@sendmail.example.test"
case("sendmail-user-unknown", sendmail_dsn(n, r, "5.1.1", "550 5.1.1 <unknown@sendmail.example.test>... User unknown"),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "unreachable@sendmail.example.test"
case("sendmail-expired", sendmail_dsn(n, r, "4.4.7", "", human=f"The original message was received at Mon, 23 Nov 2026 09:00:00 GMT\r\n\r\n   ----- The following addresses had permanent fatal errors -----\r\n<{r}>\r\n    (reason: Deferred: Connection timed out with mx.example.test.)\r\n\r\nMessage could not be delivered for 5 days\r\nMessage will be deleted from queue\r\n", remote=None),
     "failed", "rfc3464", r, "4.4.7", "expired", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "waiting@sendmail.example.test"
case("sendmail-delayed", sendmail_dsn(n, r, "4.4.1", "", action="delayed", subject="Warning: could not send message for past 4 hours",
     human=f"    **********************************************\r\n    **      THIS IS A WARNING MESSAGE ONLY      **\r\n    **  YOU DO NOT NEED TO RESEND YOUR MESSAGE  **\r\n    **********************************************\r\n\r\nThe original message was received at Mon, 30 Nov 2026 05:00:00 GMT\r\n\r\n   ----- Transcript of session follows -----\r\n<{r}>... Deferred: Connection refused by mx.example.test.\r\nWarning: message still undelivered after 4 hours\r\nWill keep trying until message is 5 days old\r\n", remote=None),
     "delayed", "rfc3464", r, "4.4.1", "routing", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "用户@例子.test"
case("global-dsn-utf8", dsn(n, reporting="mx.utf8.example.test", from_hdr="MAILER-DAEMON@mx.utf8.example.test", subject="Undelivered Mail Returned to Sender",
     human=f"<{r}>: host mx.utf8.example.test said: 550 5.1.1 no such mailbox", global_dsn=True,
     recipients=[(r, "failed", "5.1.1", "mx.utf8.example.test", "smtp; 550 5.1.1 no such mailbox")], orig_to=r),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "second@multi.example.test"
case("multi-recipient-one-failed", dsn(n, reporting="mx.multi.example.test", from_hdr="MAILER-DAEMON@mx.multi.example.test", subject="Delivery Status Notification",
     human="Delivery to the following recipient failed permanently:\r\n\r\n     second@multi.example.test\r\n",
     recipients=[("first@multi.example.test", "delivered", "2.0.0", "mx.multi.example.test", "smtp; 250 2.0.0 OK"),
                 (r, "failed", "5.1.1", "mx.multi.example.test", "smtp; 550 5.1.1 <second@multi.example.test>: Recipient address rejected: User unknown in local recipient table")],
     orig_to="first@multi.example.test"),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "headers.only@example.test"
raw = dsn(n, reporting="mx.headers.example.test", from_hdr="MAILER-DAEMON@mx.headers.example.test", subject="Undelivered Mail Returned to Sender",
          human="The message could not be delivered.", headers_only=True,
          recipients=[(r, "failed", "5.1.1", "mx.headers.example.test", "smtp; 550 5.1.1 User unknown")], orig_to=r)
case("headers-only-returned", raw, "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "qp@example.test"
case("quoted-printable-human-part", dsn(n, reporting="mx.qp.example.test", from_hdr="MAILER-DAEMON@mx.qp.example.test", subject="Undeliverable: =?utf-8?q?Your_November_offers?=",
     human="Votre message n'a pas pu =C3=AAtre remis =C3=A0 qp@example.test.", human_cte="quoted-printable",
     recipients=[(r, "failed", "5.1.1", "mx.qp.example.test", "smtp; 550 5.1.1 Adresse inconnue / unknown address")], orig_to=r),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "someone@no-such-domain.test"
case("dsn-bad-domain-512", dsn(n, reporting="mx.isp.example.test", from_hdr="MAILER-DAEMON@mx.isp.example.test", subject="Undelivered Mail Returned to Sender",
     human="Domain not found.", recipients=[(r, "failed", "5.1.2", None, "smtp; 550 5.1.2 Bad destination system address")], orig_to=r),
     "failed", "rfc3464", r, "5.1.2", "bad_domain", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "listed@isp.example.test"
case("dsn-blocklisted", postfix_dsn(n, r, "5.7.1", "mx.isp.example.test", "554 5.7.1 Service unavailable; Client host [192.0.2.25] blocked using zen.spamhaus.test; https://www.spamhaus.test/query/ip/192.0.2.25"),
     "failed", "rfc3464", r, "5.7.1", "policy", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "nearly.full@isp.example.test"
case("dsn-over-quota-delayed", postfix_dsn(n, r, "4.2.2", "mx.isp.example.test", "452 4.2.2 Mailbox full, try again later", action="delayed", subject="Delayed Mail (still being retried)"),
     "delayed", "rfc3464", r, "4.2.2", "mailbox_full", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "reached@isp.example.test"
case("dsn-success-delivered", dsn(n, reporting="mx.isp.example.test", from_hdr="MAILER-DAEMON@mx.isp.example.test", subject="Successful Mail Delivery Report",
     human="Your message was successfully delivered to the destination(s) listed below.",
     recipients=[(r, "delivered", "2.0.0", "mx.isp.example.test", "smtp; 250 2.0.0 OK")], orig_to=r),
     "delivered", "rfc3464", r, None, None, message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "relayed@legacy.example.test"
case("dsn-relayed", dsn(n, reporting="gw.legacy.example.test", from_hdr="MAILER-DAEMON@gw.legacy.example.test", subject="Relayed Mail Report",
     human="Your message was relayed to a system that does not report delivery.",
     recipients=[(r, "relayed", "2.0.0", "legacy.example.test", None)], orig_to=r),
     "delivered", "rfc3464", r, None, None, message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "bounce@ses.example.test"
case("amazon-ses-dsn", dsn(n, reporting="a1-2.smtp-out.amazonses.test", from_hdr="MAILER-DAEMON@amazonses.test", subject="Delivery Status Notification (Failure)",
     human="An error occurred while trying to deliver the mail to the following recipients:\r\nbounce@ses.example.test",
     recipients=[(r, "failed", "5.1.1", "mx.ses.example.test", "smtp; 550 5.1.1 user unknown")], orig_to=r),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "typo@mimecast-customer.test"
case("mimecast-invalid-recipient", dsn(n, reporting="relay.mimecast.test", from_hdr="postmaster@mimecast.test", subject="Undeliverable Mail",
     human="Your message couldn't be delivered.",
     recipients=[(r, "failed", "5.0.0", "us-smtp-inbound-1.mimecast.test", "smtp; 550 Invalid Recipient - https://community.mimecast.test/docs/DOC-1369#550 [aBcDeFgHiJ.us123]")], orig_to=r),
     "failed", "rfc3464", r, "5.0.0", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "protected@pp-customer.test"
case("proofpoint-policy", dsn(n, reporting="mx0a.pphosted.test", from_hdr="MAILER-DAEMON@pphosted.test", subject="Undeliverable Mail",
     human="Message rejected.",
     recipients=[(r, "failed", "5.7.1", "mx0a.pphosted.test", "smtp; 550 5.7.1 Mail rejected by policy. Contact the recipient's administrator.")], orig_to=r),
     "failed", "rfc3464", r, "5.7.1", "policy", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "guarded@barracuda-customer.test"
case("barracuda-blocked", dsn(n, reporting="d123.ess.barracudanetworks.test", from_hdr="MAILER-DAEMON@ess.barracudanetworks.test", subject="Undeliverable Mail",
     human="Blocked.",
     recipients=[(r, "failed", "5.7.1", "d123.ess.barracudanetworks.test", "smtp; 554 5.7.1 Service unavailable; Client host [192.0.2.25] blocked using Barracuda Reputation; http://www.barracudanetworks.test/reputation/?pr=1&ip=192.0.2.25")], orig_to=r),
     "failed", "rfc3464", r, "5.7.1", "policy", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "closed@icloud.test"
case("icloud-user-does-not-exist", dsn(n, reporting="mx01.mail.icloud.test", from_hdr="MAILER-DAEMON@icloud.test", subject="Undelivered Mail Returned to Sender",
     human="The mail system", recipients=[(r, "failed", "5.1.1", "mx01.mail.icloud.test", "smtp; 550 5.1.1 <closed@icloud.test>: user does not exist")], orig_to=r),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "notcustomer@comcast.test"
case("comcast-not-our-customer", dsn(n, reporting="resimta-ch2-01v.sys.comcast.test", from_hdr="MAILER-DAEMON@comcast.test", subject="Undelivered Mail Returned to Sender",
     human="The mail system", recipients=[(r, "failed", "5.1.1", "mx1.comcast.test", "smtp; 550 5.1.1 Not our Customer")], orig_to=r),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "vanished@gmx.test"
case("gmx-mailbox-unavailable", dsn(n, reporting="mout.gmx.test", from_hdr="Mail Delivery System <mailer-daemon@gmx.test>", subject="Mail delivery failed: returning message to sender",
     human="This message was created automatically by mail delivery software.", recipients=[(r, "failed", "5.0.0", "mx00.emig.gmx.test", "smtp; 550 Requested action not taken: mailbox unavailable")], orig_to=r),
     "failed", "rfc3464", r, "5.0.0", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "secure@tls-only.test"
case("dsn-tls-required", postfix_dsn(n, r, "5.7.10", "mx.tls-only.test", "530 5.7.10 Encryption needed: must issue a STARTTLS command first"),
     "failed", "rfc3464", r, "5.7.10", "tls_required", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "wrapped@example.test"
case("dsn-folded-diagnostic", dsn(n, reporting="mx.wrap.example.test", from_hdr="MAILER-DAEMON@mx.wrap.example.test", subject="Undelivered Mail Returned to Sender",
     human="folded", recipients=[(r, "failed", "5.1.1", "mx.wrap.example.test", "smtp; 550-5.1.1 <wrapped@example.test>:\r\n    Recipient address rejected:\r\n    User unknown in virtual mailbox table")], orig_to=r),
     "failed", "rfc3464", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

# ---------------------------------------------------------------- non-standard bounces
n += 1; r = "nouser@qmail.example.test"
case("qmail-user-unknown", plain_bounce(n, from_hdr="MAILER-DAEMON@qmail.example.test", subject="failure notice",
     body=f"Hi. This is the qmail-send program at qmail.example.test.\r\nI'm afraid I wasn't able to deliver your message to the following addresses.\r\nThis is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n<{r}>:\r\n192.0.2.40 does not like recipient.\r\nRemote host said: 550 5.1.1 <{r}>: User unknown\r\nGiving up on 192.0.2.40.\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n{original(n, r)}"),
     "failed", "qmail", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "quota@qmail.example.test"
case("qmail-over-quota", plain_bounce(n, from_hdr="MAILER-DAEMON@qmail.example.test", subject="failure notice",
     body=f"Hi. This is the qmail-send program at qmail.example.test.\r\nI'm afraid I wasn't able to deliver your message to the following addresses.\r\n\r\n<{r}>:\r\nThe users mailfolder is over the allowed quota (size). (#5.2.2)\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n{original(n, r)}"),
     "failed", "qmail", r, "5.2.2", "mailbox_full", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "nobody@local.qmail.example.test"
case("qmail-no-mailbox", plain_bounce(n, from_hdr="MAILER-DAEMON@qmail.example.test", subject="failure notice",
     body=f"Hi. This is the qmail-send program at qmail.example.test.\r\n\r\n<{r}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n{original(n, r)}"),
     "failed", "qmail", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))

EXIM_HEAD = "This message was created automatically by mail delivery software.\r\n\r\nA message that you sent could not be delivered to one or more of its\r\nrecipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
n += 1; r = "gone@exim.example.test"
case("exim-user-unknown", plain_bounce(n, from_hdr="Mail Delivery System <Mailer-Daemon@exim.example.test>", subject="Mail delivery failed: returning message to sender",
     body=EXIM_HEAD + f"  {r}\r\n    host mx.exim.example.test [192.0.2.50]\r\n    SMTP error from remote mail server after RCPT TO:<{r}>:\r\n    550 5.1.1 <{r}>: Recipient address rejected: User unknown\r\n\r\n------ This is a copy of the message, including all the headers. ------\r\n\r\n{original(n, r)}",
     extra_headers="X-Failed-Recipients: " + r + "\r\nAuto-Submitted: auto-replied\r\n"),
     "failed", "exim", r, "5.1.1", "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "anyone@unrouteable.test"
case("exim-unrouteable", plain_bounce(n, from_hdr="Mail Delivery System <Mailer-Daemon@exim.example.test>", subject="Mail delivery failed: returning message to sender",
     body=EXIM_HEAD + f"  {r}\r\n    Unrouteable address\r\n\r\n------ This is a copy of the message, including all the headers. ------\r\n\r\n{original(n, r)}"),
     "failed", "exim", r, None, "bad_domain", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "never@exim.example.test"
case("exim-retry-timeout", plain_bounce(n, from_hdr="Mail Delivery System <Mailer-Daemon@exim.example.test>", subject="Mail delivery failed: returning message to sender",
     body=EXIM_HEAD + f"  {r}\r\n    retry timeout exceeded\r\n\r\n------ This is a copy of the message, including all the headers. ------\r\n\r\n{original(n, r)}"),
     "failed", "exim", r, None, "expired", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "later@exim.example.test"
case("exim-delay-warning", plain_bounce(n, from_hdr="Mail Delivery System <Mailer-Daemon@exim.example.test>", subject="Warning: message 1tABCD-000123-4E delayed 24 hours",
     body=f"This message was created automatically by mail delivery software.\r\nA message that you sent has not yet been delivered to one or more of its\r\nrecipients after more than 24 hours on the queue on exim.example.test.\r\n\r\nThe message identifier is:     1tABCD-000123-4E\r\n\r\nThe address to which the message has not yet been delivered is:\r\n\r\n  {r}\r\n    Delay reason: SMTP error from remote mail server after RCPT TO:<{r}>:\r\n    451 4.3.0 Temporary lookup failure\r\n\r\nNo action is required on your part.\r\n"),
     "delayed", "exim", r, "4.3.0", "other", message_id=None, verp=verp_of(n))
n += 1; r = "stuffed@exim.example.test"
case("exim-mailbox-full", plain_bounce(n, from_hdr="Mail Delivery System <Mailer-Daemon@exim.example.test>", subject="Mail delivery failed: returning message to sender",
     body=EXIM_HEAD + f"  {r}\r\n    mailbox is full: retry timeout exceeded\r\n\r\n------ This is a copy of the message, including all the headers. ------\r\n\r\n{original(n, r)}"),
     "failed", "exim", r, None, "mailbox_full", message_id=mid_of(n), verp=verp_of(n))

n += 1; r = "olduser@exchange2003.example.test"
case("exchange-plain-ndr", plain_bounce(n, from_hdr="postmaster@exchange2003.example.test", subject="Undeliverable: Your November offers",
     body=f"Your message did not reach some or all of the intended recipients.\r\n\r\n      Subject:\tYour November offers\r\n      Sent:\t30/11/2026 09:00\r\n\r\nThe following recipient(s) cannot be reached:\r\n\r\n      {r} on 30/11/2026 09:00\r\n            The e-mail account does not exist at the organization this message was sent to.\r\n            <exchange2003.example.test #5.1.1>\r\n"),
     "failed", "exchange", r, "5.1.1", "bad_mailbox", message_id=None, verp=verp_of(n))
n += 1; r = "nope@yahoo.test"
case("yahoo-plain", plain_bounce(n, from_hdr="MAILER-DAEMON@yahoo.test", subject="Failure Notice",
     body=f"Sorry, we were unable to deliver your message to the following address.\r\n\r\n<{r}>:\r\nRemote host said: 554 delivery error: dd This user doesn't have a yahoo.test account ({r}) [-5] - mta1234.mail.bf1.yahoo.test [RCPT_TO]\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n{original(n, r)}"),
     "failed", "yahoo", r, None, "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "missing@sendmail.example.test"
case("sendmail-plain", plain_bounce(n, from_hdr="Mail Delivery Subsystem <MAILER-DAEMON@sendmail.example.test>", subject="Returned mail: see transcript for details",
     body=f"The original message was received at Mon, 30 Nov 2026 09:00:00 GMT\r\nfrom shop.test [192.0.2.25]\r\n\r\n   ----- The following addresses had permanent fatal errors -----\r\n<{r}>\r\n    (reason: 550 5.1.1 <{r}>... User unknown)\r\n\r\n   ----- Transcript of session follows -----\r\n... while talking to mx.sendmail.example.test.:\r\n>>> RCPT To:<{r}>\r\n<<< 550 5.1.1 <{r}>... User unknown\r\n"),
     "failed", "sendmail", r, "5.1.1", "bad_mailbox", message_id=None, verp=verp_of(n))
n += 1; r = "listed@old-postfix.example.test"
case("postfix-plain-blocklist", plain_bounce(n, from_hdr="MAILER-DAEMON@old-postfix.example.test (Mail Delivery System)", subject="Undelivered Mail Returned to Sender",
     body=f"This is the mail system at host old-postfix.example.test.\r\n\r\nI'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.\r\n\r\n<{r}>: host mx.old-postfix.example.test[192.0.2.60] said: 554 5.7.1\r\n    Service unavailable; Client host [192.0.2.25] blocked using bl.spamcop.test\r\n    (in reply to RCPT TO command)\r\n"),
     "failed", "postfix", r, "5.7.1", "policy", message_id=None, verp=verp_of(n))
n += 1; r = "typo@gmail.test"
case("gmail-plain-address-not-found", plain_bounce(n, from_hdr="Mail Delivery Subsystem <mailer-daemon@googlemail.test>", subject="Address not found",
     body=f"** Address not found **\r\n\r\nYour message wasn't delivered to {r} because the address couldn't be found, or is unable to receive mail.\r\n\r\nLearn more here: https://support.google.test/mail/?p=NoSuchUser\r\n"),
     "failed", "gmail", r, None, "bad_mailbox", message_id=None, verp=verp_of(n))
n += 1; r = "notlisted@domino.example.test"
case("domino-not-listed", plain_bounce(n, from_hdr="Postmaster@domino.example.test", subject="DELIVERY FAILURE: User notlisted (notlisted@domino.example.test) not listed in Domino Directory",
     body=f"Your message\r\n\r\n  Subject: Your November offers\r\n\r\nwas not delivered to:\r\n\r\n  {r}\r\n\r\nbecause:\r\n\r\n  User notlisted ({r}) not listed in Domino Directory\r\n"),
     "failed", "generic", r, None, "bad_mailbox", message_id=None, verp=verp_of(n))
n += 1; r = "someone@generic.example.test"
case("generic-undeliverable", plain_bounce(n, from_hdr="postmaster@generic.example.test", subject="Undeliverable mail: Your November offers",
     body=f"Message could not be delivered to {r}: mailbox unavailable.\r\n\r\n----- Original message -----\r\n\r\n{original(n, r)}"),
     "failed", "generic", r, None, "bad_mailbox", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "slowpoke@old-postfix.example.test"
case("postfix-plain-delayed", plain_bounce(n, from_hdr="MAILER-DAEMON@old-postfix.example.test (Mail Delivery System)", subject="Delayed Mail (still being retried)",
     body=f"This is the mail system at host old-postfix.example.test.\r\n\r\n####################################################################\r\n# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n####################################################################\r\n\r\nYour message could not be delivered for more than 4 hour(s).\r\nIt will be retried until it is 5 day(s) old.\r\n\r\n<{r}>: connect to mx.old-postfix.example.test[192.0.2.61]:25: Connection refused\r\n"),
     "delayed", "postfix", r, None, "other", message_id=None, verp=verp_of(n))

# ---------------------------------------------------------------- complaints (ARF)
n += 1
case("arf-yahoo", arf(n, reporter="feedback.yahoo.test", user_agent="Yahoo!-Mail-Feedback/2.0", subject="FW: Your November offers"),
     "complaint", "rfc5965", "redacted@example.test", None, None, mail_from="", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "reporter@hotmail.test"
case("arf-microsoft-jmrp", arf(n, reporter="jmrp.microsoft.test", user_agent="Microsoft JMRP/1.0", rcpt=r, orig_to=r,
     extra_fields="X-HmXmrOriginalRecipient: <reporter@hotmail.test>\r\n", subject="complaint about message from 192.0.2.25"),
     "complaint", "rfc5965", r, None, None, mail_from="staff@jmrp.microsoft.test", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "user@comcast.test"
case("arf-comcast-headers-only", arf(n, reporter="feedback.comcast.test", user_agent="Comcast Feedback Loop/1.0", rcpt=r, headers_only=True, orig_to=r),
     "complaint", "rfc5965", r, None, None, mail_from="", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "member@aol.test"
case("arf-aol", arf(n, reporter="scomp.aol.test", user_agent="AOL SComp", rcpt=r, orig_to=r, subject="Email Feedback Report for IP 192.0.2.25"),
     "complaint", "rfc5965", r, None, None, mail_from="scomp@aol.test", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "phished@isp.example.test"
case("arf-fraud", arf(n, reporter="abuse.isp.example.test", user_agent="SomeGenerator/1.0", feedback_type="fraud", rcpt=r, orig_to=r),
     "complaint", "rfc5965", r, None, None, mail_from="abuse@isp.example.test", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "happy@isp.example.test"
case("arf-not-spam", arf(n, reporter="abuse.isp.example.test", user_agent="SomeGenerator/1.0", feedback_type="not-spam", rcpt=r, orig_to=r),
     "unclassified", "rfc5965", r, None, None, mail_from="abuse@isp.example.test", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "dmarc@receiver.example.test"
case("dmarc-auth-failure-report", arf(n, reporter="dmarc.receiver.example.test", user_agent="DMARC-Failure-Reporter/1.0", feedback_type="auth-failure", rcpt=r, orig_to=r,
     extra_fields="Auth-Failure: dmarc\r\nAuthentication-Results: receiver.example.test; dmarc=fail header.from=shop.test\r\n", subject="DMARC failure report for shop.test"),
     "unclassified", "rfc5965", r, None, None, mail_from="dmarc@receiver.example.test", message_id=mid_of(n), verp=verp_of(n))
n += 1; r = "annoyed@isp.example.test"
_, v, m = ids(n)
case("abuse-report-not-arf", (
    f"From: abuse@isp.example.test\r\nTo: abuse@{RETURN_DOMAIN}\r\nSubject: Abuse report: unsolicited mail\r\nDate: Mon, 30 Nov 2026 11:00:00 +0000\r\n"
    f"Message-ID: <{n:04d}.abuse@isp.example.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"ab\"\r\n\r\n"
    f"--ab\r\nContent-Type: text/plain\r\n\r\nOne of our customers reported the attached message as spam.\r\n\r\n"
    f"--ab\r\nContent-Type: message/rfc822\r\n\r\n{original(n, r)}\r\n--ab--\r\n"),
    "complaint", "abuse_report", r, None, None, mail_from="abuse@isp.example.test", message_id=m, verp=v)
n += 1
case("arf-no-recipient-redacted-headers", arf(n, reporter="fbl.mailru.test", user_agent="Mail.Ru FBL/1.0", headers_only=True, orig_to="undisclosed-recipients:;"),
     "complaint", "rfc5965", None, None, None, mail_from="fbl@mailru.test", message_id=mid_of(n), verp=verp_of(n))

# ---------------------------------------------------------------- auto-replies
n += 1
case("outlook-automatic-reply", reply(n, subject="Automatic reply: Your November offers", body="I am out of the office until 7 December with limited access to email.",
     headers="Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: All\r\nThread-Topic: Your November offers\r\n"),
     "auto_reply", "out_of_office", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("gmail-vacation-responder", reply(n, subject="Re: Your November offers", body="Thanks for your note. I'm travelling and will reply next week.",
     headers="Auto-Submitted: auto-replied\r\nPrecedence: bulk\r\n"),
     "auto_reply", "rfc3834", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("german-abwesenheitsnotiz", reply(n, subject="Abwesenheitsnotiz: Your November offers", body="Ich bin bis zum 7. Dezember nicht im Büro."),
     "auto_reply", "out_of_office", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("french-reponse-automatique", reply(n, subject="=?utf-8?q?R=C3=A9ponse_automatique=C2=A0=3A_Your_November_offers?=", body="Je suis absente jusqu'au 7 décembre."),
     "auto_reply", "out_of_office", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("boxtrapper-challenge", reply(n, subject="Please verify your email address", body="The message you sent requires that you verify that you are a real live human being.",
     headers="X-Boxtrapper: 1tXYZ-000AbC-9Q\r\n"),
     "auto_reply", "challenge_response", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("challenge-text-only", reply(n, subject="Your message is awaiting confirmation", body="I use a spam filter that requires senders to confirm. To have your message delivered, please click the link below to confirm: https://confirm.example.test/c/123"),
     "auto_reply", "challenge_response", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("x-autoreply-header", reply(n, subject="Re: Your November offers", body="We received your message and will answer within two working days.", headers="X-Autoreply: yes\r\n"),
     "auto_reply", "rfc3834", None, None, None, mail_from="support@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("precedence-auto-reply", reply(n, subject="Thank you for contacting us", body="Ticket #1234 opened.", headers="Precedence: auto_reply\r\n"),
     "auto_reply", "rfc3834", None, None, None, mail_from="helpdesk@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("spanish-respuesta-automatica", reply(n, subject="=?iso-8859-1?q?Respuesta_autom=E1tica:_Your_November_offers?=", body="Estoy fuera de la oficina."),
     "auto_reply", "out_of_office", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))

# ---------------------------------------------------------------- mailto unsubscribes, people, junk
n += 1
case("mailto-unsubscribe", reply(n, subject="unsubscribe", body=""),
     "unclassified", "none", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("mailto-unsubscribe-apple-mail", reply(n, subject="unsubscribe", body="This message was sent automatically by Mail to unsubscribe from the mailing list.",
     headers="X-Mailer: Apple Mail (2.3774)\r\n"),
     "unclassified", "none", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("human-reply", reply(n, subject="Re: Your November offers", body="Thanks! Do you ship to Norway?"),
     "unclassified", "none", None, None, None, mail_from="ada@mail.example.test", message_id=None, verp=verp_of(n))
n += 1
case("spam-to-bounce-domain", (
    "From: \"Prize Center\" <winner@lottery.example.test>\r\nTo: info@bounces.shop.test\r\nSubject: You have WON $1,000,000\r\n"
    "Date: Mon, 30 Nov 2026 03:00:00 +0000\r\nMessage-ID: <spam.1@lottery.example.test>\r\nContent-Type: text/html\r\n\r\n<p>Click <a href=\"http://lottery.example.test\">here</a></p>\r\n"),
    "unclassified", "none", None, None, None, mail_from="winner@lottery.example.test", message_id=None, verp=None)
n += 1
case("malformed-mime-unterminated", (
    "From: MAILER-DAEMON@broken.example.test\r\nSubject: Undelivered Mail Returned to Sender\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"never\"\r\n\r\n"
    "--never\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; broken\r\n"),
    "unclassified", "none", None, None, None, mail_from="", message_id=None, verp=None)
n += 1
case("binary-garbage", "\x00\x01\x02MAIL\xff\xfe garbage without headers\r\n\r\n\x80\x81",
     "unclassified", "none", None, None, None, mail_from="x@garbage.example.test", message_id=None, verp=None)
n += 1
case("empty-message", "", "unclassified", "none", None, None, None, mail_from="", message_id=None, verp=None)
n += 1
case("daemon-unknown-format", plain_bounce(n, from_hdr="MAILER-DAEMON@odd.example.test", subject="Notice", body="Something happened to a message. Contact your administrator.\r\n"),
     "unclassified", "none", None, None, None, mail_from="", message_id=None, verp=verp_of(n))


def toml_str(v):
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


os.makedirs(HERE, exist_ok=True)
for old in os.listdir(HERE):
    if old.endswith(".eml"):
        os.remove(os.path.join(HERE, old))
with open(os.path.join(HERE, "expected.toml"), "w", encoding="utf-8") as out:
    out.write("# What each message of the corpus must be classified as; written by make.py.\n")
    for c in CASES:
        with open(os.path.join(HERE, c["file"]), "wb") as f:
            f.write(c["raw"].encode("utf-8", "surrogateescape") if not c["raw"].startswith("\x00") else c["raw"].encode("latin-1"))
        out.write("\n[[case]]\n")
        for key in ("file", "kind", "format", "recipient", "status", "category", "mail_from", "message_id", "verp"):
            if c[key] is not None:
                out.write(f"{key} = {toml_str(c[key])}\n")
print(f"{len(CASES)} cases")
