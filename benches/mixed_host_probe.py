#!/usr/bin/env python3
"""Detection of tunnels hidden in a busy host's normal traffic, by encoding and session size.

For three benign hosts of the development log (their busiest hours), a tunnel session of N
queries (two encoded labels of 40 and 20 characters under one made-up domain) is added to the
host's own hour of traffic, the batch is scored through a running service's /apply, and the
mean probability and the share of tunnel queries alerting (>= 0.5) are printed.

Usage: mixed_host_probe.py --url http://127.0.0.1:5000 --token TOKEN --models dnsexfil_v2[,other]
       [--dev tests/fixtures/dev]
Only the Python standard library is used; the session names are deterministic.
"""
import argparse, collections, csv, io, json, random, urllib.request

ALPHABETS = {
    "hex": "0123456789abcdef",
    "base32": "abcdefghijklmnopqrstuvwxyz234567",
    "BASE32": "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567",
    "base64url": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
}
SIZES = [3, 6, 12, 25, 50]


def busy_benign_hours(dev):
    labels = {(r["src"], r["query"]): r["is_exfiltration"]
              for r in csv.DictReader(open(f"{dev}/labels.csv", newline=""))}
    by_hour = collections.defaultdict(list)
    for e in csv.DictReader(open(f"{dev}/events.csv", newline="")):
        if labels.get((e["src"], e["query"])) == "0":
            by_hour[(e["src"], int(float(e["_time"]) // 3600))].append(e["query"])
    ranked = sorted(by_hour, key=lambda k: (-len(by_hour[k]), k))
    return [(k[0], by_hour[k]) for k in (ranked[5], ranked[40], ranked[120])]


def batch(src, queries, kind, n):
    rng = random.Random(1)
    word = lambda length: "".join(rng.choice(ALPHABETS[kind]) for _ in range(length))
    tunnel = [f"{word(40)}.{word(20)}.c2.badcorp-cdn.com" for _ in range(n)]
    seen, rows = collections.Counter(), []
    for q in tunnel + queries:
        seen[q] += 1
        if seen[q] < 10:
            rows.append((src, q, seen[q]))
    return rows, set(tunnel)


def score(url, token, model, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["src", "query", "rank"])
    w.writerows(rows)
    body = json.dumps({"data": buf.getvalue(),
                       "meta": {"options": {"model_name": model, "params": {}}}}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/apply", data=body,
                                 headers={"Authorization": token})
    answer = json.load(urllib.request.urlopen(req))
    if answer.get("status") != "success":
        raise SystemExit(f"{model}: {answer.get('message')}")
    return list(csv.DictReader(io.StringIO(answer["results"])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--models", required=True)
    ap.add_argument("--dev", default="tests/fixtures/dev", help="the development log (events.csv, labels.csv)")
    a = ap.parse_args()
    hosts = busy_benign_hours(a.dev)
    print("queries in the session:", " ".join(f"{n:>12}" for n in SIZES))
    for model in a.models.split(","):
        print(model)
        for kind in ALPHABETS:
            cells = []
            for n in SIZES:
                probs = []
                for src, queries in hosts:
                    rows, tunnel = batch(src, queries, kind, n)
                    for r in score(a.url, a.token, model, rows):
                        p = next(v for k, v in r.items() if k.endswith("_proba"))
                        if r["query"] in tunnel and p:
                            probs.append(float(p))
                alerts = sum(p >= 0.5 for p in probs) / len(probs)
                cells.append(f"{sum(probs) / len(probs):.2f} / {alerts:4.0%}")
            print(f"  {kind:<10}", " ".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    main()
