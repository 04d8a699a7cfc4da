#!/usr/bin/env python3
"""A low-and-slow tunnel over six hourly /apply requests, with and without history.

Each hour is the busiest benign hour of development host 10.10.248.77 (130 queries), replayed
at that hour's time, plus three lower-case hex names of --hex-len characters under a made-up
domain from that host (the riding tunnel) and three under another domain from a source of its
own. The hours are sent in order (the first 7 hours ago, so all fall in the default 24-hour
window) to a running service's /apply; per hour it prints the tunnel names' probabilities
(riding, own source, interleaved) and the highest benign probability. Run it once against a
service with history on and once against one with `--history off` to see what the long window
changes. The two sources' history is deleted first, so reruns start from nothing.
The long-window model is `models/dnsexfil_v5.safetensors` (serve it with `--model`); the
figures it gives are in docs/history.md, and tests/low_and_slow.rs checks them.

Usage: low_and_slow_probe.py --url http://127.0.0.1:5000 --token TOKEN --model dnsexfil_v5
       [--hex-len 12] [--names-seed 3] [--dev tests/fixtures/dev]
Only the Python standard library is used; the names are deterministic (seeded).
"""
import argparse, csv, io, json, random, time, urllib.error, urllib.request

HOST, HOUR, OWN = "10.10.248.77", 482178, "10.66.0.9"


def request(url, token, body=None, method="POST", bearer=False):
    data = None if body is None else json.dumps(body).encode()
    auth = f"Bearer {token}" if bearer else token
    req = urllib.request.Request(url, data=data, method=method, headers={"Authorization": auth})
    try:
        with urllib.request.urlopen(req) as resp:
            return json.load(resp) if resp.status == 200 else None
    except urllib.error.HTTPError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--model", default="dnsexfil_v5")
    ap.add_argument("--hex-len", type=int, default=12)
    ap.add_argument("--names-seed", type=int, default=3, help="seed of the tunnels' names")
    ap.add_argument("--dev", default="tests/fixtures/dev")
    args = ap.parse_args()
    benign = [(int(float(e["_time"])) % 3600, e["query"])
              for e in csv.DictReader(open(f"{args.dev}/events.csv", newline=""))
              if e["src"] == HOST and int(float(e["_time"])) // 3600 == HOUR]
    for src in (HOST, OWN):
        request(f"{args.url}/v1/history/{src}", args.token, method="DELETE", bearer=True)
    rng = random.Random(args.names_seed)
    name = lambda domain: f"{rng.getrandbits(4 * args.hex_len):0{args.hex_len}x}.{domain}"
    first = (int(time.time()) // 3600 - 7) * 3600  # on the hour: one request, one clock hour
    for hour in range(6):
        start = first + 3600 * hour
        rows = [(start + offset, HOST, query) for offset, query in benign]
        for i in range(3):
            at = start + 600 + 1100 * i
            rows += [(at, HOST, name("sync-cdn-upd.com")), (at, OWN, name("relay-metrics.net"))]
        rows.sort()
        seen, out = {}, io.StringIO()
        out.write("_time,src,query,rank\n")
        for t, src, query in rows:
            seen[(src, query)] = seen.get((src, query), 0) + 1
            out.write(f"{t},{src},{query},{seen[(src, query)]}\n")
        answer = request(f"{args.url}/apply", args.token,
                         {"data": out.getvalue(), "meta": {"options": {"model_name": args.model}}})
        scored = [r for r in csv.DictReader(io.StringIO(answer["results"]))
                  if r["pred_is_dns_data_exfiltration_proba"]]
        tunnel = lambda r: r["query"].endswith(("sync-cdn-upd.com", "relay-metrics.net"))
        probs = [round(float(r["pred_is_dns_data_exfiltration_proba"]), 3) for r in scored if tunnel(r)]
        worst = max(float(r["pred_is_dns_data_exfiltration_proba"]) for r in scored if not tunnel(r))
        print(f"hour {hour + 1}: tunnel {probs}  highest benign {worst:.3f}")


if __name__ == "__main__":
    main()
