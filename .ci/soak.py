#!/usr/bin/env python3
"""Soak test (issue 19): good traffic mixed with the hostile clients of the hardening issue,
against a local `dnsexfil serve` with the Kubernetes manifest's settings, on loopback only.

Hostile clients: senders of large /v1/score bodies that never read the answer, /fit bodies
trickled a byte at a time, keep-alive connections asking for health now and then (held open),
clients that connect and send headers slowly, and bodies over the in-flight budget. Hostile
store: every few seconds a FIFO, a sparse multi-GB file, a symlink to /dev/zero and a file whose
header claims 1 TiB appear in the model store as `*.safetensors` (rescanned every
--store-rescan-secs, and looked at by an /apply naming one of them), stay until the log says
each was skipped, and are removed. Good traffic: /apply batches and fresh-connection /healthz
probes.

Passes when the process never dies, every /healthz probe answers within 1 s, the peak RSS
stays under the manifest's memory limit, RSS comes back near idle afterwards, and every file
put into the store is seen skipped in the log. Prints its figures. Standard library only.

    python3 .ci/soak.py [--seconds 600] [--binary target/release/dnsexfil] [--prefix CMD]
                        [--store-rescan-secs 1]

The memory limit itself comes from whatever runs the server: give a command prefix that runs it
under one, e.g. --prefix "systemd-run --user --scope -p MemoryMax=1G" (the prefix must exec the
server in place, so that its process id is the server's). Without one, the peak RSS is only
compared with the manifest's limit.
"""

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "soak-token-7d1e"


def manifest_settings():
    """The Deployment's DNSEXFIL_* env values and its memory limit in MiB."""
    text = open(os.path.join(ROOT, "docker/kubernetes/deployment.yaml")).read()
    env = dict(re.findall(r'- name: (DNSEXFIL_[A-Z0-9_]+)\s*\n\s*value: "?([^"\n]+)"?', text))
    # Only the limits the service enforces; paths and log settings are the soak's own.
    keep = {k: v for k, v in env.items() if k.startswith("DNSEXFIL_MAX_")}
    limit = re.search(r"limits:\s*\n(?:\s+cpu:.*\n)?\s+memory:\s*(\d+)(Mi|Gi)", text)
    mib = int(limit.group(1)) * (1024 if limit.group(2) == "Gi" else 1)
    return keep, mib


def rss_mib(pid, field="VmRSS:"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def request(port, method, path, body=None, timeout=30, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    req.add_header("Authorization", TOKEN)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Figures:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.health_worst = 0.0
        self.health_slow = 0
        self.rss_peak = 0.0
        self.store_placed = 0
        self.store_skipped = 0
        self.store_unseen = 0

    def count(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1


def good_apply(port, body, stop, figures, label="apply"):
    while not stop.is_set():
        try:
            status, text = request(port, "POST", "/apply", body, timeout=60)
            ok = status == 200 and json.loads(text).get("status") == "success"
            figures.count(f"{label} ok" if ok else f"{label} refused ({status})")
        except Exception as e:  # noqa: BLE001 - a figure, not a failure
            figures.count(f"{label} {type(e).__name__}")
        time.sleep(0.2)


def health_probe(port, stop, figures):
    while not stop.is_set():
        started = time.monotonic()
        try:
            status, _ = request(port, "GET", "/healthz", timeout=5)
            took = time.monotonic() - started
            ok = status == 200
        except Exception:  # noqa: BLE001
            took, ok = time.monotonic() - started, False
        with figures.lock:
            figures.health_worst = max(figures.health_worst, took)
            if not ok or took > 1.0:
                figures.health_slow += 1
        time.sleep(0.25)


def never_reads(port, body, stop, figures):
    """Posts a large /v1/score body and never reads the answer; reconnects when dropped."""
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(
                f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            figures.count("non-reader sent")
            s.settimeout(1)
            while not stop.is_set():
                try:
                    # Peek only to learn that the server dropped us: nothing is consumed.
                    if s.recv(1, socket.MSG_PEEK) == b"":
                        break
                except socket.timeout:
                    pass
                time.sleep(1)
            s.close()
        except OSError:
            time.sleep(0.5)


def trickle_fit(port, stop, figures):
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(
                f"POST /fit HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{".encode()
            )
            while not stop.is_set():
                s.sendall(b" ")
                time.sleep(2)
        except OSError:
            figures.count("trickler dropped")
            time.sleep(0.5)


def keepalive_health(port, stop, figures):
    s = None
    while not stop.is_set():
        try:
            if s is None:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            if not s.recv(4096):
                raise OSError("closed")
        except OSError:
            figures.count("keep-alive poller closed")
            s = None
        time.sleep(3)


def slow_headers(port, stop, figures):
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            for ch in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":
                if stop.is_set():
                    break
                s.sendall(bytes([ch]))
                time.sleep(1)
        except OSError:
            figures.count("slow header client dropped")
            time.sleep(0.5)


# The kinds of file the store attacks put into the model store.
STORE_ATTACKS = ("fifo", "sparse", "zero", "header")
SKIPPED = "model file in the store skipped"


def place_store_attacks(store, n):
    """Puts one of each store attack into `store` under names of round `n`; returns their paths."""
    paths = {kind: os.path.join(store, f"soak-{kind}-{n}.safetensors") for kind in STORE_ATTACKS}
    os.mkfifo(paths["fifo"])
    # Sparse: no disk space, 3 GiB if read.
    with open(paths["sparse"], "wb") as f:
        f.truncate(3 << 30)
    os.symlink("/dev/zero", paths["zero"])
    # Under the file size limit, but its header claims 1 TiB.
    with open(paths["header"], "wb") as f:
        f.write((1 << 40).to_bytes(8, "little"))
        f.truncate(1 << 20)
    return list(paths.values())


class SkippedInLog:
    """The file names the service's log says it skipped in the store, read as the log grows."""

    def __init__(self, log_path):
        self.log_path = log_path
        self.offset = 0
        self.names = set()

    def __call__(self):
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            text = f.read()
        # Only whole lines: the rest is read again next time.
        text = text[: text.rfind(b"\n") + 1]
        self.offset += len(text)
        for line in text.decode(errors="replace").splitlines():
            if SKIPPED in line:
                self.names.update(re.findall(r"soak-\w+-\d+\.safetensors", line))
        return self.names


def store_attacks(port, store, log_path, stop, figures, every):
    """Every `every` seconds, puts the store attacks into the store, waits (at most 60 s) until
    the log says each was skipped, and removes them. A small /apply naming one of them makes a
    request look in the store too."""
    n = 0
    skipped_in_log = SkippedInLog(log_path)
    while not stop.is_set():
        n += 1
        paths = place_store_attacks(store, n)
        apply_unknown = json.dumps({
            "data": "src,query,rank\n10.1.1.1,www.example.com,1\n",
            "meta": {"options": {"model_name": f"soak-fifo-{n}", "params": {}}},
        }).encode()
        try:
            request(port, "POST", "/apply", apply_unknown, timeout=30)
        except Exception:  # noqa: BLE001 - the health probe is what must hold
            figures.count("store: unknown-model apply failed")
        names = {os.path.basename(p) for p in paths}
        deadline = time.monotonic() + 60
        seen = set()
        while time.monotonic() < deadline and not stop.is_set():
            seen = names & skipped_in_log()
            if seen == names:
                break
            time.sleep(0.5)
        # A round cut short by the end of the soak is not counted.
        if seen == names or not stop.is_set():
            with figures.lock:
                figures.store_placed += len(names)
                figures.store_skipped += len(seen)
                figures.store_unseen += len(names - seen)
        for p in paths:
            os.unlink(p)
        stop.wait(every)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/dnsexfil"))
    parser.add_argument("--prefix", default="", help="command the server runs under (a memory limit)")
    parser.add_argument("--store-rescan-secs", type=int, default=1,
                        help="the server's --store-rescan-secs; store attacks are placed every 3 rescans")
    args = parser.parse_args()
    settings, limit_mib = manifest_settings()
    data = tempfile.mkdtemp(prefix="soak.")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSEXFIL_")}
    env.update(settings)
    env.update({"api_token": TOKEN, "ENABLE_HTTPS": "false", "RUST_LOG": "warn"})
    store = os.path.join(data, "app/model/data")
    os.makedirs(store)
    log_path = os.path.join(data, "server.log")
    server = subprocess.Popen(
        shlex.split(args.prefix) + [args.binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data,
                                    "--store-rescan-secs", str(args.store_rescan_secs)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "w"),
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if request(port, "GET", "/readyz", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            sys.exit(f"soak: the server did not become ready (log: {data}/server.log)")
        time.sleep(0.2)
    time.sleep(1)
    idle = rss_mib(server.pid)
    apply_body = subprocess.run(
        [args.binary, "synth", "--rows", "5000", "--envelope", "--model-name", "dnsexfil_v7"],
        check=True,
        capture_output=True,
    ).stdout
    events = ",".join(f'{{"src": "10.0.{i % 200}.{i % 250}", "query": "a{i}.example.com"}}' for i in range(100_000))
    score_body = f'{{"events": [{events}]}}'.encode()
    body_limit = int(settings.get("DNSEXFIL_MAX_BODY_MB", "160"))
    big_body = json.dumps({"data": "src,query,rank\n" + "10.1.1.1,www.example.com,1\n" * ((body_limit << 20) // 30), "meta": {}}).encode()

    figures = Figures()
    stop = threading.Event()
    threads = [threading.Thread(target=health_probe, args=(port, stop, figures))]
    threads += [threading.Thread(target=good_apply, args=(port, apply_body, stop, figures)) for _ in range(2)]
    threads += [threading.Thread(target=never_reads, args=(port, score_body, stop, figures)) for _ in range(8)]
    threads += [threading.Thread(target=trickle_fit, args=(port, stop, figures)) for _ in range(8)]
    threads += [threading.Thread(target=keepalive_health, args=(port, stop, figures)) for _ in range(40)]
    threads += [threading.Thread(target=slow_headers, args=(port, stop, figures)) for _ in range(8)]
    # Bodies at the size limit, several at once: over the in-flight budget, or refused.
    threads += [
        threading.Thread(target=good_apply, args=(port, big_body, stop, figures, "body at the limit"))
        for _ in range(12)
    ]
    threads.append(threading.Thread(
        target=store_attacks, args=(port, store, log_path, stop, figures, 3 * args.store_rescan_secs)))
    for t in threads:
        t.daemon = True
        t.start()
    started = time.monotonic()
    died = False
    while time.monotonic() - started < args.seconds:
        if server.poll() is not None:
            died = True
            break
        figures.rss_peak = max(figures.rss_peak, rss_mib(server.pid))
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    after = 0.0
    if not died:
        time.sleep(10)
        after = rss_mib(server.pid)
        # The kernel's own peak, between the samples too.
        figures.rss_peak = max(figures.rss_peak, rss_mib(server.pid, "VmHWM:"))
        server.terminate()
        server.wait(timeout=60)
    print(f"soak: {args.seconds} s, manifest memory limit {limit_mib} MiB, settings {settings}")
    if args.prefix:
        print(f"soak: server run under: {args.prefix}")
    print(f"soak: RSS idle {idle:.0f} MiB, peak {figures.rss_peak:.0f} MiB, after {after:.0f} MiB")
    print(f"soak: /healthz worst {figures.health_worst * 1000:.0f} ms, slow or failed {figures.health_slow}")
    print(f"soak: store attacks (FIFO, sparse 3 GiB, /dev/zero link, 1 TiB header claim) placed "
          f"{figures.store_placed}, seen skipped in the log {figures.store_skipped}, "
          f"not seen within 60 s {figures.store_unseen}")
    for what, n in sorted(figures.counts.items()):
        print(f"soak: {what}: {n}")
    problems = []
    if died:
        problems.append(f"the server died (exit {server.returncode}; log: {data}/server.log)")
    if figures.health_slow:
        problems.append(f"{figures.health_slow} /healthz probes took over 1 s or failed")
    if figures.rss_peak > limit_mib:
        problems.append(f"peak RSS {figures.rss_peak:.0f} MiB is over the {limit_mib} MiB limit")
    if not died and after > max(2 * idle, idle + 128):
        problems.append(f"RSS did not come back near idle ({after:.0f} MiB after, {idle:.0f} idle)")
    if figures.store_unseen or not figures.store_skipped:
        problems.append(f"{figures.store_unseen} of {figures.store_placed} files put into the store were not seen "
                        f"skipped in the log ({figures.store_skipped} were)")
    if problems:
        sys.exit("soak: FAILED: " + "; ".join(problems))
    print("soak: passed")


if __name__ == "__main__":
    main()
