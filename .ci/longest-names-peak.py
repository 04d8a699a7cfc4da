#!/usr/bin/env python3
"""Peak memory of the worst DSDL body that the default limits accept (issue 19, item 8): an hour
of 100,000 rows (MLTK's max_inputs) of the longest legal DNS names in presentation form, 250
octets in labels of 63, 63, 63 and 61, every octet a `\\DDD` escape, in the envelope Splunk's
client sends (JSON doubles each backslash). Starts `dnsexfil serve` with its default limits on
loopback, sends the body to /apply once, and prints the body size, the time and the process's
peak resident memory (VmHWM) against its idle. Standard library only.

    python3 .ci/longest-names-peak.py [--binary target/release/dnsexfil] [--rows 100000]
"""

import argparse
import json
import os
import sys
import time
import urllib.request

import local_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "peak-token-3b9a"




def longest_names_body(rows):
    """The same rows as tests/hardening.rs's longest_names_envelope."""
    state = 7
    out = ["src,query,rank\n"]
    for i in range(rows):
        labels = []
        for length in (63, 63, 63, 61):
            label = []
            for _ in range(length):
                state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
                label.append("\\%03d" % (state >> 56))
            labels.append("".join(label))
        out.append(f"10.{i % 256}.{(i // 256) % 256}.{i % 251},{'.'.join(labels)},1\n")
    envelope = {
        "data": "".join(out),
        "meta": {
            "options": {
                "params": {"algo": "dnsexfil_v7"},
                "args": ["src", "query", "rank"],
                "feature_variables": ["src", "query", "rank"],
                "model_name": "dnsexfil_v7",
                "algo_name": "MLTKContainer",
                "mlspl_limits": {"max_inputs": "100000", "use_sampling": "true"},
            },
            "feature_variables": ["src", "query", "rank"],
        },
    }
    return json.dumps(envelope).encode()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/dnsexfil"))
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    body = longest_names_body(args.rows)
    server, port, data = local_server.start(args.binary, TOKEN, "peak.", ())
    try:
        idle = local_server.status_mib(server.pid, "VmRSS:")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/apply", data=body, method="POST")
        req.add_header("Authorization", TOKEN)
        req.add_header("Content-Type", "application/json")
        started = time.monotonic()
        with urllib.request.urlopen(req, timeout=600) as resp:
            answer = json.loads(resp.read())
        took = time.monotonic() - started
        peak = local_server.status_mib(server.pid, "VmHWM:")
    finally:
        server.terminate()
        server.wait(timeout=60)
    if answer.get("status") != "success":
        sys.exit(f"/apply failed: {answer.get('message', '')[:300]}")
    mib = len(body) / (1 << 20)
    print(f"longest names: {args.rows} rows, body {mib:.1f} MiB, answered in {took:.1f} s")
    print(f"longest names: RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB ({(peak - idle) / mib:.2f}x the body above idle)")


if __name__ == "__main__":
    main()
