#!/usr/bin/env python3
"""Streaming equivalence over the whole development log: each hour (from the log's first event,
moved by whole hours to the last day, which the history keeps) is sent to a fresh
`dnsexfil serve` as one `/v1/score` request, then in time order as 100-event requests and as
one event per request, each event with its time. Prints, per request size, the share of scored
events whose label is the one-request label, the tunnel events caught each way, and the mean
time of a request as this (Python, one connection per request) client sees it.

Usage: benches/streaming_equivalence.py BINARY [--history memory|off] [--hours 0-47]
A measurement that prints numbers, not a test (tests/streaming.rs checks four hours); its
figures go to docs/history.md.
"""
import argparse
import csv
import json
import os
import re
import subprocess
import tempfile
import threading
import time
import urllib.request

TOKEN = "streaming-equivalence-token"
# Requests sent and seconds spent sending them (client included), by events per request.
REQUESTS, SECONDS = {}, {}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = os.path.join(ROOT, "tests", "fixtures", "dev")


def serve(binary, history, data_dir):
    env = dict(os.environ, api_token=TOKEN)
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "--host", "127.0.0.1", "--log-format", "json",
         "--enable-https", "false", "--data-dir", data_dir, "--history", history],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        found = re.search(r'"address":"([^"]+)"', line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, found.group(1)
    raise SystemExit("the service did not start")


def labels(address, events):
    body = json.dumps({"events": events}).encode()
    request = urllib.request.Request(
        f"http://{address}/v1/score", data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    return [r["label"] for r in json.load(urllib.request.urlopen(request))["results"]]


def streamed(binary, history, events, per_request):
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address = serve(binary, history, data_dir)
        try:
            out = []
            started = time.perf_counter()
            for i in range(0, len(events), per_request):
                out += labels(address, events[i:i + per_request])
            REQUESTS[per_request] = REQUESTS.get(per_request, 0) + (len(events) + per_request - 1) // per_request
            SECONDS[per_request] = SECONDS.get(per_request, 0.0) + time.perf_counter() - started
            return out
        finally:
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--history", default="memory")
    parser.add_argument("--hours", default="0-47")
    args = parser.parse_args()
    first, last = (int(h) for h in args.hours.split("-"))
    with open(os.path.join(DEV, "events.csv")) as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["_time"]))
    with open(os.path.join(DEV, "labels.csv")) as f:
        tunnels = {(r["src"], r["query"]) for r in csv.DictReader(f) if r["is_exfiltration"] == "1"}
    t0 = int(rows[0]["_time"])
    totals = {}
    for hour in range(first, last + 1):
        start = t0 + hour * 3600
        shift = (int(time.time()) - 600 - (start + 3600)) // 3600 * 3600
        events = [{"src": r["src"], "query": r["query"], "rank": int(r["rank"]),
                   "time": int(r["_time"]) + shift}
                  for r in rows if start <= int(r["_time"]) < start + 3600]
        if not events:
            continue
        reference = streamed(args.binary, args.history, events, len(events))
        for per_request in (100, 1):
            got = streamed(args.binary, args.history, events, per_request)
            scored = [i for i, label in enumerate(reference) if label is not None]
            tunnel = [i for i in scored if (events[i]["src"], events[i]["query"]) in tunnels]
            t = totals.setdefault(per_request, [0, 0, 0, 0, 0])
            t[0] += len(scored)
            t[1] += sum(reference[i] == got[i] for i in scored)
            t[2] += len(tunnel)
            t[3] += sum(reference[i] == 1 for i in tunnel)
            t[4] += sum(got[i] == 1 for i in tunnel)
    for per_request, (scored, same, tunnel, caught, caught_streamed) in totals.items():
        print(f"history {args.history}, {per_request} event(s) per request: {same} of {scored} "
              f"labels as in one request ({same / scored:.4%}); tunnel events {tunnel}: caught "
              f"{caught} in one request, {caught_streamed} streamed; "
              f"{1e3 * SECONDS[per_request] / REQUESTS[per_request]:.2f} ms per request")


if __name__ == "__main__":
    main()
