#!/usr/bin/env python3
"""Agreement of Sendmill's inbound classifier with a public corpus of real returned mail.

What it measures
----------------
Every sample in set-of-emails' maildir/bsd/ that Sisimai's own test suite gives an
expected "reason" for is run through the prebuilt classifier binary (one JSON line per
file: file, kind, format, recipient, status, code, diagnostic, category, feedback_type,
note), and Sendmill's answer is compared with Sisimai's reason:

  (a) KIND      a bounce (any reason but feedback/vacation/delivered) is recognised as
                failed or delayed (not unclassified/complaint/...), a `feedback` sample as
                complaint, a `vacation` sample as auto_reply, a `delivered` one as delivered.
  (b) SUPPRESS  bounces whose Sisimai reason is userunknown / hostunknown / mailboxfull
                (the reasons that drive suppression decisions): kind failed/delayed AND
                category bad_mailbox / bad_domain / mailbox_full respectively.
  (c) CATEGORY  every bounce with a mappable reason: kind failed/delayed AND category is
                one of the categories the reason maps to (table below).
  (c') as (c), but also accepting bad_mailbox for Sisimai's `filtered` (Sisimai files a
                "User unknown" given after DATA, or by a filtering relay, as filtered).
  Also printed: RECIPIENT check, where the bounce has an X-Failed-Recipients header, is
  our recipient one of its addresses; and FALSE SUPPRESSION, bounces we put in bad_mailbox/bad_domain (categories
  that suppress) while no recipient of that sample has a mailbox/domain reason in Sisimai.

A sample can hold several recipients (Sisimai lists one expectation each); the classifier
reports one. A sample counts as agreeing when our answer fits ANY of its recipients'
reasons; it is put in (b) when its FIRST recipient's reason is one of the three.
Sisimai is a reference, not an oracle: a disagreement is something to look at, not
automatically a Sendmill bug.

Where the data comes from
-------------------------
  corpus        https://github.com/sisimai/set-of-emails  (BSD-2/MIT), maildir/bsd/*.eml,
                measured at commit 18e585c22288b83c1f6943949cb86b2623b362ce (2025-12-10)
  expectations  https://github.com/sisimai/go-sisimai  fact/*_test.go ("publiclist"
                rows {"Label", Index, "Status", "ReplyCode", "Reason", HardBounce, "..."}
                with EngineTest(t, "Name", publiclist, true)  ->  maildir/bsd/
                {lhost-|rhost-|}<name>-<Label>.eml), commit
                ed142ded2c40de1233f82d8405a0acf0b76998c6 (2025-02-23);
                then https://github.com/sisimai/rb-sisimai test/public/*.rb ("'01' =>
                [['5.1.1', '550', 'userunknown', true], ...]", file lhost-postfix.rb ->
                lhost-postfix-01.eml), commit 9c4a18472ab13e0382c3dec7ffbea39f2e187c91
                (v5.1.0p3, 2024-10-09), only for samples go-sisimai has no row for
                (lhost-office365-01..13, arf-22..24: Hotmail non-ARF complaints,
                lhost-exim-07). The first source given wins per sample.
  Renamed samples (byte-identical, git R100): lhost-interscanmss-NN -> lhost-trendmicro-NN,
  lhost-mailmarshalsmtp-NN -> lhost-mailmarshal-NN.
  Samples added to set-of-emails after those commits have no ground truth and are only
  counted.

Reason -> Sendmill mapping (a set = any member counts as agreement; "?" = judgement call)
-----------------------------------------------------------------------------------------
  userunknown, hasmoved, suspend         -> bad_mailbox
  hostunknown                            -> bad_domain
  mailboxfull                            -> mailbox_full
  exceedlimit (?)                        -> mailbox_full | policy      (size over a per-recipient limit)
  systemfull (?)                         -> mailbox_full | routing | other
  blocked, rejected, spamdetected, policyviolation, contenterror, virusdetected,
  norelaying, requireptr                 -> policy
  filtered (?)                           -> policy | other
  badreputation (?)                      -> policy | rate_limited
  notaccept (?)                          -> bad_domain | policy | routing   (null MX / host takes no mail)
  mesgtoobig (?)                         -> policy | other
  notcompliantrfc (?)                    -> protocol | policy
  syntaxerror                            -> protocol
  expired                                -> expired
  toomanyconn, speeding                  -> rate_limited
  securityerror                          -> tls_required | authentication
  authfailure (SPF/DKIM/DMARC)           -> authentication | policy
  failedstarttls                         -> tls_required
  networkerror, systemerror, mailererror -> routing | other
  feedback -> kind complaint;  vacation -> kind auto_reply;  delivered -> kind delivered
  undefined, onhold                      -> skipped (no ground truth)
  any other reason                       -> no category expectation (kind only)

Usage
-----
  cargo build -p sendmill-inbound --example classify
  python3 inbound/tests/public_corpus.py SET_OF_EMAILS_DIR EXPECT_DIR [EXPECT_DIR ...]
          [--classify target/debug/examples/classify] [--quiet]
  Not part of the test suite: the corpora are fetched by hand (git clone the three
  repositories at the commits above). The figures of the last measurement are in the
  README's inbound section.
  EXPECT_DIR is a go-sisimai tree (has fact/*_test.go) or an rb-sisimai tree (has
  test/public/*.rb), in priority order. Standard library only.
"""

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys

BOUNCE_FAMILY = {"failed", "delayed"}

MAP = {
    "userunknown": {"bad_mailbox"},
    "hasmoved": {"bad_mailbox"},
    "suspend": {"bad_mailbox"},
    "hostunknown": {"bad_domain"},
    "mailboxfull": {"mailbox_full"},
    "exceedlimit": {"mailbox_full", "policy"},
    "systemfull": {"mailbox_full", "routing", "other"},
    "blocked": {"policy"},
    "rejected": {"policy"},
    "spamdetected": {"policy"},
    "policyviolation": {"policy"},
    "contenterror": {"policy"},
    "virusdetected": {"policy"},
    "norelaying": {"policy"},
    "requireptr": {"policy"},
    "filtered": {"policy", "other"},
    "badreputation": {"policy", "rate_limited"},
    "notaccept": {"bad_domain", "policy", "routing"},
    "mesgtoobig": {"policy", "other"},
    "notcompliantrfc": {"protocol", "policy"},
    "syntaxerror": {"protocol"},
    "expired": {"expired"},
    "toomanyconn": {"rate_limited"},
    "speeding": {"rate_limited"},
    "securityerror": {"tls_required", "authentication"},
    "authfailure": {"authentication", "policy"},
    "failedstarttls": {"tls_required"},
    "networkerror": {"routing", "other"},
    "systemerror": {"routing", "other"},
    "mailererror": {"routing", "other"},
}
KIND_REASONS = {"feedback": "complaint", "vacation": "auto_reply", "delivered": "delivered"}
SKIP = {"undefined", "onhold"}
LENIENT = {"filtered": {"bad_mailbox"}}  # extra answers accepted only in (c')
SUPPRESS_REASONS = {"userunknown": "bad_mailbox", "hostunknown": "bad_domain", "mailboxfull": "mailbox_full"}
MAILBOX_OR_DOMAIN = {"userunknown", "hasmoved", "suspend", "hostunknown", "notaccept"}
RENAMED = {"lhost-interscanmss-": "lhost-trendmicro-", "lhost-mailmarshalsmtp-": "lhost-mailmarshal-"}

GO_ROW = re.compile(r'\{\s*"(\w+)"\s*,\s*(\d+)\s*,\s*"([^"]*)"\s*,\s*"([^"]*)"\s*,\s*"([^"]*)"\s*,'
                    r'\s*(true|false)\s*,\s*"([^"]*)"\s*\}')
GO_BLOCK = re.compile(r'publiclist\s*:=\s*\[\]\[\]IsExpected\{(.*?)\}\s*;?\s*'
                      r'EngineTest\(t,\s*"(\w+)",\s*publiclist', re.S)
RB_LABEL = re.compile(r"\s*'(\d+)'\s*=>")
RB_ROW = re.compile(r"\[\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*(true|false)")


def git_head(path):
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None
    except OSError:
        return None


def load_go(root):
    """{sample file name: [(status, replycode, reason), ...]} from go-sisimai fact/*_test.go."""
    exp = {}
    for path in sorted(glob.glob(os.path.join(root, "fact", "*_test.go"))):
        text = open(path, encoding="utf-8").read()
        m = re.search(r"func Test(Lhost|Rhost)?(\w+)\(t \*testing\.T\)", text)
        if not m:
            continue
        prefix = {"Lhost": "lhost-", "Rhost": "rhost-"}.get(m.group(1), "")
        for block, engine in GO_BLOCK.findall(text):
            for label, idx, status, code, reason, _hard, _other in GO_ROW.findall(block):
                name = f"{prefix}{engine.lower()}-{label}.eml"
                # first row per (sample, recipient index) wins: rfc3464 lists "01" twice
                exp.setdefault(name, {}).setdefault(int(idx), (status, code, reason))
    return {k: [v[i] for i in sorted(v)] for k, v in exp.items()}


def load_rb(root):
    """Same shape, from rb-sisimai test/public/{lhost-*,rhost-*,arf,rfc3464,rfc3834}.rb."""
    exp = {}
    for path in sorted(glob.glob(os.path.join(root, "test", "public", "*.rb"))):
        base = os.path.basename(path)[:-3]
        if base.endswith("-test") or base.endswith("-code") or "IsExpected" not in open(path).read():
            continue
        name = None
        for line in open(path, encoding="utf-8"):
            m = RB_LABEL.match(line)
            if m:
                name = f"{base}-{int(m.group(1)):02d}.eml"
            if name:
                exp.setdefault(name, []).extend((s, c, r) for s, c, r, _h in RB_ROW.findall(line))
            if re.match(r"\s*\}", line):
                name = None
    return exp


def load_expectations(dirs):
    merged, source = {}, {}
    for d in dirs:
        if glob.glob(os.path.join(d, "fact", "*_test.go")):
            exp = load_go(d)
        elif glob.glob(os.path.join(d, "test", "public", "*.rb")):
            exp = load_rb(d)
        else:
            sys.exit(f"{d}: neither fact/*_test.go (go-sisimai) nor test/public/*.rb (rb-sisimai)")
        for name, rows in exp.items():
            for old, new in RENAMED.items():
                if name.startswith(old):
                    name = new + name[len(old):]
            if name not in merged and rows:
                merged[name] = rows
                source[name] = d
    return merged, source


def classify(binary, files):
    out = {}
    for i in range(0, len(files), 100):
        batch = files[i:i + 100]
        res = subprocess.run([binary] + batch, capture_output=True, text=True)
        got = {}
        for line in res.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                j = json.loads(line)
                got.setdefault(j.get("file"), j)
        if res.returncode != 0 or len(got) < len(batch):
            for f in batch:  # retry one by one so a single bad file does not sink the batch
                if f in got:
                    continue
                r = subprocess.run([binary, f], capture_output=True, text=True)
                lines = [l for l in r.stdout.splitlines() if l.strip().startswith("{")]
                got[f] = json.loads(lines[0]) if lines else {"file": f, "kind": "ERROR",
                                                             "note": r.stderr.strip()[:200]}
        out.update(got)
    return out


def pct(n, d):
    return f"{n}/{d} = {100.0 * n / d:.1f}%" if d else "0/0"


def short(s, n=170):
    s = " ".join(str(s or "").split())
    return s if len(s) <= n else s[:n - 3] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("soe", help="set-of-emails checkout (has maildir/bsd)")
    ap.add_argument("expect", nargs="+", help="go-sisimai and/or rb-sisimai tree(s), priority order")
    ap.add_argument("--classify", default="target/debug/examples/classify", help="classifier binary")
    ap.add_argument("--quiet", action="store_true", help="figures only, no disagreement list")
    a = ap.parse_args()

    bsd = os.path.join(a.soe, "maildir", "bsd")
    samples = sorted(f for f in os.listdir(bsd) if f.endswith(".eml"))
    exp, source = load_expectations(a.expect)
    for d in [a.soe] + a.expect:
        print(f"# {d}: commit {git_head(d) or '(not a git checkout; see docstring)'}")

    res = classify(a.classify, [os.path.join(bsd, f) for f in samples])
    res = {os.path.basename(k): v for k, v in res.items()}

    no_truth = [f for f in samples if f not in exp]
    skipped = [f for f in samples if f in exp and exp[f][0][2] in SKIP]
    truth = [f for f in samples if f in exp and exp[f][0][2] not in SKIP]

    kind_ok = kind_n = 0
    kind_by = collections.defaultdict(lambda: [0, 0])  # bounce/feedback/vacation/delivered -> [n, ok]
    sup = collections.Counter()          # reason -> (n, ok)
    sup_ok = collections.Counter()
    cat_ok = cat_n = cat_len = 0
    false_supp = []
    per_reason = collections.defaultdict(lambda: [0, 0])
    disagree = []
    confusion = collections.Counter()

    for f in truth:
        rows = exp[f]
        reasons = [r for _, _, r in rows if r not in SKIP]
        first = reasons[0]
        o = res.get(f, {"kind": "MISSING"})
        kind, cat = o.get("kind"), o.get("category")
        problems = []

        # (a) kind
        if first in KIND_REASONS:
            want = {KIND_REASONS[r] for r in reasons if r in KIND_REASONS}
            ok = kind in want
            kind_n += 1; kind_ok += ok
            kind_by[first][0] += 1; kind_by[first][1] += ok
            if not ok:
                problems.append(f"kind {kind} (want {'/'.join(sorted(want))})")
            disagree.append((f, rows, o, problems)) if problems else None
            continue
        ok_kind = kind in BOUNCE_FAMILY
        kind_n += 1; kind_ok += ok_kind
        kind_by["bounce"][0] += 1; kind_by["bounce"][1] += ok_kind
        if not ok_kind:
            problems.append(f"kind {kind} (want failed/delayed)")

        # (c) category
        accepted = set().union(*(MAP.get(r, set()) for r in reasons))
        if accepted:
            ok_cat = ok_kind and cat in accepted
            cat_n += 1; cat_ok += ok_cat
            lenient = accepted.union(*(LENIENT.get(r, set()) for r in reasons))
            cat_len += ok_kind and cat in lenient
            per_reason[first][0] += 1; per_reason[first][1] += ok_cat
            if not ok_cat:
                confusion[(first, cat if ok_kind else kind)] += 1
            if ok_kind and not ok_cat:
                problems.append(f"category {cat} (want {'/'.join(sorted(accepted))})")
        # (b) suppression-driving reasons
        if first in SUPPRESS_REASONS:
            sup[first] += 1
            sup_ok[first] += ok_kind and cat in accepted
        # false suppression
        if ok_kind and cat in ("bad_mailbox", "bad_domain") and not (set(reasons) & MAILBOX_OR_DOMAIN):
            false_supp.append(f)
            problems.append("FALSE-SUPPRESSION")
        if problems:
            disagree.append((f, rows, o, problems))

    print(f"\nsamples in maildir/bsd: {len(samples)};  with ground truth: {len(truth)};  "
          f"skipped (undefined/onhold): {len(skipped)};  no expectation row: {len(no_truth)}")
    print(f"(a) KIND agreement:                 {pct(kind_ok, kind_n)}   "
          + ", ".join(f"{k} {pct(ok, n)}" for k, (n, ok) in sorted(kind_by.items(), key=lambda x: -x[1][0])))
    sn, so = sum(sup.values()), sum(sup_ok.values())
    print(f"(b) userunknown/hostunknown/mailboxfull category: {pct(so, sn)}   "
          + ", ".join(f"{r} {pct(sup_ok[r], sup[r])}" for r in SUPPRESS_REASONS))
    print(f"(c) overall CATEGORY agreement:     {pct(cat_ok, cat_n)}")
    print(f"(c') CATEGORY, filtered->bad_mailbox also accepted: {pct(cat_len, cat_n)}")
    nf = sum(1 for f in false_supp if exp[f][0][2] == "filtered")
    print(f"    false suppression (we say bad_mailbox/bad_domain, sisimai has no such reason): "
          f"{len(false_supp)} ({nf} of them sisimai 'filtered', {len(false_supp) - nf} other reasons)")
    xfr_n, xfr_bad = 0, []
    for f in samples:
        o = res.get(f, {})
        if o.get("kind") not in BOUNCE_FAMILY:
            continue
        head = open(os.path.join(bsd, f), "rb").read().decode("latin-1").replace("\r\n", "\n").split("\n\n", 1)[0]
        m = re.search(r"^X-Failed-Recipients:[ \t]*(.*(?:\n[ \t].*)*)", head, re.M | re.I)
        if not m:
            continue
        xfr = [x.strip("<>").lower() for x in re.split(r"[,\s]+", m.group(1)) if "@" in x]
        xfr_n += 1
        if (o.get("recipient") or "").lower() not in xfr:
            xfr_bad.append((f, o.get("recipient"), xfr[0] if xfr else ""))
    print(f"    RECIPIENT vs X-Failed-Recipients header: {pct(xfr_n - len(xfr_bad), xfr_n)} "
          f"(mismatches: {', '.join(f'{f} ours={r} header={x}' for f, r, x in xfr_bad[:6])}"
          f"{' ...' if len(xfr_bad) > 6 else ''})")

    print("\nper sisimai reason (first recipient): agree/total, and our answers where not agreeing")
    for r, (n, ok) in sorted(per_reason.items(), key=lambda x: -x[1][0]):
        wrong = collections.Counter({k[1]: v for k, v in confusion.items() if k[0] == r})
        detail = ", ".join(f"{k}:{v}" for k, v in wrong.most_common())
        print(f"  {r:16s} {ok:3d}/{n:<3d} {('  ours: ' + detail) if detail else ''}")

    print("\nno ground truth (counted, not scored):",
          dict(collections.Counter(res.get(f, {}).get("kind") for f in no_truth)))
    if a.quiet:
        return
    print(f"\nDISAGREEMENTS ({len(disagree)})")
    for f, rows, o, problems in disagree:
        want = "; ".join(f"{r}({s or '-'} {c or '-'})" for s, c, r in rows)
        print(f"- {f}  sisimai: {want}")
        print(f"    ours: kind={o.get('kind')} format={o.get('format')} category={o.get('category')} "
              f"status={o.get('status')} code={o.get('code')} -> {' | '.join(problems)}")
        if o.get("diagnostic") or o.get("note"):
            print(f"    diag: {short(o.get('diagnostic'))}" + (f"  note: {short(o.get('note'), 80)}" if o.get("note") else ""))


if __name__ == "__main__":
    main()
