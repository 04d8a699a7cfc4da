#!/usr/bin/env python3
"""Memory that clients which never read their answer pin (issue 19, item 4): CLIENTS clients each
post a /v1/score body of EVENTS tiny events (1,000,000: about 22 MiB, an answer of about 160 MiB)
to `dnsexfil serve` with its default limits on loopback, and never read. Samples the process's
resident memory while the sockets stay open and prints idle, peak and the memory held once the
answers are all being sent, then closes the clients and prints where the memory comes back to.
Standard library only.

    python3 .ci/unread-answers.py [--binary target/release/dnsexfil] [--clients 8] [--events 1000000]
"""

import argparse
import os
import socket
import time

import local_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "unread-token-51c0"




def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/dnsexfil"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--events", type=int, default=1_000_000)
    # Longer than the run: the clients hold their sockets open and unread for all of it.
    parser.add_argument("--write-timeout-secs", type=int, default=600)
    args = parser.parse_args()
    events = ",".join('{"src":"%d","query":"%d"}' % (i % 10, i % 7) for i in range(args.events))
    body = ('{"events":[%s]}' % events).encode()
    server, port, data = local_server.start(args.binary, TOKEN, "unread.", ("--write-timeout-secs", str(args.write_timeout_secs)))
    try:
        idle = local_server.status_mib(server.pid)
        head = (
            f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        clients = []
        for _ in range(args.clients):
            s = socket.create_connection(("127.0.0.1", port), timeout=600)
            s.sendall(head + body)
            clients.append(s)
        started = time.monotonic()
        peak, statuses = 0.0, []
        # Each answer's head, peeked (nothing is read), tells that it is being sent.
        for s in clients:
            while True:
                peak = max(peak, local_server.status_mib(server.pid))
                s.settimeout(0.5)
                try:
                    got = s.recv(4096, socket.MSG_PEEK)
                except socket.timeout:
                    continue
                if b"\r\n\r\n" in got or not got:
                    statuses.append(got[9:12].decode() if got else "closed")
                    break
        # Then the memory they hold, once the work's memory has been handed back.
        for _ in range(20):
            peak = max(peak, local_server.status_mib(server.pid))
            time.sleep(0.5)
        held = local_server.status_mib(server.pid)
        peak = max(peak, local_server.status_mib(server.pid, "VmHWM:"))
        answering = time.monotonic() - started
        for s in clients:
            s.close()
        time.sleep(3)
        after = local_server.status_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"unread answers: {args.clients} clients x {args.events} events, body {len(body) / (1 << 20):.1f} MiB each, statuses {' '.join(statuses)}")
    print(f"unread answers: RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB, held while unread {held:.0f} MiB ({answering:.0f} s in), {after:.0f} MiB after the clients closed")


if __name__ == "__main__":
    main()
