#!/usr/bin/env python3
"""Splits each request's latency under load into where it was spent, from a syscall trace.

Reads `perf script` output of the tracepoints recorded by `benches/latency_trace.sh` (the
server's `recvfrom`/`writev`, wrk's `read`/`write`) and, for every request, takes four times:
wrk writes the request, the server reads it, the server writes the answer, wrk reads it. So
latency = waiting to be read by the server + the server's own time + wrk's delay in reading.
It also prints how far the server's order of service strays from the order of arrival, and the
mean wait per 10 ms of the trace (to tell a shuffled order from a machine that slows down).
"""

import collections
import re
import sys

LINE = re.compile(r"^\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+syscalls:(\w+):\s*(.*)$")
FD = re.compile(r"fd: (0x[0-9a-f]+)")


def is_server(comm):
    return comm.startswith("tokio-rt")


def read_trace(lines):
    """Per-fd lists of times: server reads and writes, wrk writes and reads (non-empty ones)."""
    server_read = collections.defaultdict(list)
    server_write = collections.defaultdict(list)
    wrk_write = collections.defaultdict(list)
    wrk_read = collections.defaultdict(list)
    # Which wrk fd reads right after a server writev: votes for the pairing of the two ends.
    votes = collections.Counter()
    entered = {}
    last_server_write = None
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        comm, tid, _cpu, ts, name, rest = m.groups()
        ts = float(ts)
        if name.startswith("sys_enter"):
            fd = FD.search(rest)
            fd = int(fd.group(1), 16) if fd else None
            entered[tid] = fd
            if is_server(comm) and name == "sys_enter_writev":
                server_write[fd].append(ts)
                last_server_write = fd
            elif comm == "wrk" and name == "sys_enter_write":
                wrk_write[fd].append(ts)
            continue
        fd = entered.get(tid)
        try:
            returned = int(rest.strip(), 16)
        except ValueError:
            continue
        if returned <= 0 or fd is None:
            continue
        if is_server(comm) and name == "sys_exit_recvfrom":
            server_read[fd].append(ts)
        elif comm == "wrk" and name == "sys_exit_read":
            wrk_read[fd].append(ts)
            if last_server_write is not None:
                votes[(last_server_write, fd)] += 1
                last_server_write = None
    pairs = {}
    for (server_fd, wrk_fd), _ in votes.most_common():
        if server_fd not in pairs and wrk_fd not in pairs.values():
            pairs[server_fd] = wrk_fd
    return pairs, server_read, server_write, wrk_write, wrk_read


def first_at_or_after(times, t, start):
    """Index of the first time >= t in sorted `times`, scanning from `start`."""
    i = start
    while i < len(times) and times[i] < t:
        i += 1
    return i


def requests(pairs, server_read, server_write, wrk_write, wrk_read):
    """(sent, read by server, answered, answer read by wrk) for each complete request."""
    out = []
    for server_fd, wrk_fd in pairs.items():
        reads, writes, answers = server_read[server_fd], server_write[server_fd], wrk_read[wrk_fd]
        i = j = k = 0
        for sent in wrk_write[wrk_fd]:
            i = first_at_or_after(reads, sent, i)
            if i == len(reads):
                break
            j = first_at_or_after(writes, reads[i], j)
            if j == len(writes):
                break
            k = first_at_or_after(answers, writes[j], k)
            if k == len(answers):
                break
            out.append((sent, reads[i], writes[j], answers[k]))
    return sorted(out)


def summary(values):
    v = sorted(values)
    n = len(v)
    return "mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f  max %.3f" % (
        sum(v) / n, v[n // 2], v[int(n * 0.9)], v[int(n * 0.99)], v[-1])


def main():
    pairs, *times = read_trace(sys.stdin)
    reqs = requests(pairs, *times)
    if not reqs:
        sys.exit("no complete request in the trace: was the server under load while it ran?")
    print("connections paired: %d, requests: %d" % (len(pairs), len(reqs)))
    ms = 1e3
    print("sent -> read by the server (ms):  " + summary([(r - s) * ms for s, r, _, _ in reqs]))
    print("read -> answered (ms):            " + summary([(w - r) * ms for _, r, w, _ in reqs]))
    print("answered -> read by wrk (ms):     " + summary([(a - w) * ms for _, _, w, a in reqs]))
    print("whole latency (ms):               " + summary([(a - s) * ms for s, _, _, a in reqs]))
    # Order of service against order of arrival (both over the whole trace).
    by_service = sorted(range(len(reqs)), key=lambda i: reqs[i][1])
    position = [0] * len(reqs)
    for served, i in enumerate(by_service):
        position[i] = served
    shift = [abs(position[i] - i) for i in range(len(reqs))]
    in_order = sum(1 for s in shift if s == 0) / len(shift)
    print("served in arrival order: %.0f%%; |service - arrival position|: %s"
          % (in_order * 100, summary(shift)))
    start = reqs[0][0]
    buckets = collections.defaultdict(list)
    for s, r, _, _ in reqs:
        buckets[int((s - start) * 100)].append((r - s) * ms)
    print("mean wait before the server reads (ms) / requests sent, per 10 ms of the trace:")
    cells = ["%.1f/%d" % (sum(w) / len(w), len(w)) for _, w in sorted(buckets.items())]
    for i in range(0, len(cells), 15):
        print("  " + " ".join(cells[i:i + 15]))


if __name__ == "__main__":
    main()
