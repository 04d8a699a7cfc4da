#!/usr/bin/env python3
"""The in-process history under a long stream: a real `dnsexfil serve` with a small history cap,
fed `/v1/score` NDJSON batches of synthetic events from many sources (a few busy ones, a tunnel
of new names on some, the rest browsing a shared pool of names) spread over the run, with event
times moving forward as the stream goes. Every few seconds it samples the server's RSS and
`/metrics` (history bytes, sources, evictions); at the end it prints the peaks against the cap.

Usage: benches/history_stream.py BINARY [--seconds 600] [--events 1000000] [--sources 50000]
       [--cap-mb 16] [--batch 2000]
A benchmark that prints numbers, not a test: its figures go to docs/history.md.
"""
import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TOKEN = "history-stream-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metrics(base):
    text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
    found = {}
    for name in ("dnsexfil_history_bytes", "dnsexfil_history_max_bytes", "dnsexfil_history_sources",
                 "dnsexfil_history_evicted_sources_total", "dnsexfil_history_recorded_total"):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        found[name] = float(m.group(1)) if m else float("nan")
    return found


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--sources", type=int, default=50_000)
    p.add_argument("--cap-mb", type=int, default=16)
    p.add_argument("--batch", type=int, default=2000)
    args = p.parse_args()

    port = free_port()
    data = tempfile.mkdtemp()
    server = subprocess.Popen(
        [args.binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data,
         "--enable-https", "false", "--history", "memory", "--history-max-mb", str(args.cap_mb)],
        env={**os.environ, "api_token": TOKEN}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        idle = rss_mib(server.pid)
        rng = random.Random(7)
        shared = [f"www.site{i}.com" for i in range(5000)] + [f"cdn{i}.cloudfront.net" for i in range(500)]
        tunnels = set(rng.sample(range(args.sources), max(1, args.sources // 500)))
        busy = set(rng.sample(range(args.sources), max(1, args.sources // 100)))
        batches = args.events // args.batch
        pause = args.seconds / batches
        start = time.time()
        clock = int(start) - 3600
        peak_rss, peak_bytes, samples, last_sample = idle, 0.0, 0, 0.0
        for b in range(batches):
            lines = []
            for _ in range(args.batch):
                # Busy sources send a tenth of the events; tunnels a new name each time.
                src = rng.choice(tuple(busy)) if rng.random() < 0.1 else rng.randrange(args.sources)
                if src in tunnels:
                    query = f"{rng.getrandbits(96):024x}.t.exfil-example.net"
                else:
                    query = rng.choice(shared)
                lines.append(json.dumps({"src": f"10.{src >> 16}.{(src >> 8) & 255}.{src & 255}",
                                         "query": query, "time": clock + int(time.time() - start)}))
            req = urllib.request.Request(
                f"{base}/v1/score", data="\n".join(lines).encode(), method="POST",
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                assert resp.status == 200, resp.status
                resp.read()
            now = time.time()
            if now - last_sample > 2 or b == batches - 1:
                m = metrics(base)
                peak_rss = max(peak_rss, rss_mib(server.pid))
                peak_bytes = max(peak_bytes, m["dnsexfil_history_bytes"])
                samples += 1
                last_sample = now
            behind = start + (b + 1) * pause - time.time()
            if behind > 0:
                time.sleep(behind)
        m = metrics(base)
        cap = m["dnsexfil_history_max_bytes"]
        print(f"{batches * args.batch:,} events from {args.sources:,} sources in {time.time() - start:.0f} s"
              f" ({batches} requests of {args.batch})")
        print(f"history cap {cap / 2**20:.0f} MiB: peak history bytes {peak_bytes / 2**20:.1f} MiB"
              f" ({peak_bytes / cap:.0%} of the cap, {samples} samples), at the end {m['dnsexfil_history_bytes'] / 2**20:.1f} MiB"
              f" for {m['dnsexfil_history_sources']:.0f} sources; {m['dnsexfil_history_evicted_sources_total']:.0f}"
              f" sources evicted; {m['dnsexfil_history_recorded_total']:.0f} (source, name, bucket) recorded")
        print(f"RSS: idle {idle:.0f} MiB, peak {peak_rss:.0f} MiB, at the end {rss_mib(server.pid):.0f} MiB")
        if peak_bytes > cap:
            sys.exit("the history went over its cap")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
