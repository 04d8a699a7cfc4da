"""A `dnsexfil serve` on a free loopback port for the memory scripts beside this file: plain
HTTP, a scratch data directory, no DNSEXFIL_* settings inherited, started and waited for until
/readyz answers; and the server's memory figures from /proc."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def status_mib(pid, field="VmRSS:"):
    """A /proc/<pid>/status figure (VmRSS:, VmHWM:) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/{pid}/status")


def start(binary, token, prefix, extra_args=()):
    """Starts the server and waits until it is ready; returns (process, port, data directory)."""
    data = tempfile.mkdtemp(prefix=prefix)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSEXFIL_")}
    env.update({"api_token": token, "ENABLE_HTTPS": "false", "RUST_LOG": "warn"})
    server = subprocess.Popen(
        [binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data,
         *extra_args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(data, "server.log"), "w"),
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return server, port, data
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            sys.exit(f"the server did not become ready (log: {data}/server.log)")
        time.sleep(0.2)
