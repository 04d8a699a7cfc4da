#!/usr/bin/env python3
"""Checks the dnsexfil container image against running containers (Python standard library only).

    python3 .ci/container_test.py IMAGE

Every check prints one line (`ok: ...` or `FAIL: ...`); the script exits 1 on the first failed
check, after removing every container and volume it made (names start with dnsexfil-ct-<pid>).
Requests go to ports published on 127.0.0.1 only. What is checked:

  - the image: size (goal under 30 MB), user 1001:0, port 5000, volume /srv, a health check;
  - a container with a read-only root filesystem and a volume at /srv: it runs as 1001:0,
    becomes healthy through `dnsexfil healthcheck`, cannot write outside /srv, serves HTTPS with
    a certificate stored in the volume whose logged SHA-256 is the one served, which a client
    pinning it (as DSDL's endpoint_cert_filename_or_path does) verifies, and which survives a
    restart and a new container;
  - the DSDL /apply golden case (Splunk's ESCU artifact given at start-up) and /v1/score;
  - a model fitted over /fit: seen by a second container on the same volume, and still served
    by a new container after both are removed;
  - `docker stop` lets a request in flight finish, and the service exits 0;
  - a 100,000-row /apply in a container limited to 256 MiB of memory;
  - idle and peak memory of the container (process RSS and the cgroup's usage).
"""

import csv
import hashlib
import http.client
import io
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
ARTIFACT = os.path.join(FIXTURES, "escu", "detect_dns_data_exfiltration_using_pretrained_model_in_dsdl.tar.gz")
ESCU = "detect_dns_data_exfiltration_using_pretrained_model_in_dsdl"
PREFIX = f"dnsexfil-ct-{os.getpid()}"
TOKEN = secrets.token_hex(16)
SIZE_GOAL = 30 * 1000 * 1000

made_containers = []
made_volumes = []
report = []


class CheckFailed(Exception):
    pass


def ok(message):
    print(f"ok: {message}", flush=True)


def check(condition, message, detail=""):
    if not condition:
        raise CheckFailed(f"{message}{': ' + detail if detail else ''}")
    ok(message)


def docker(*args, check=True, timeout=300, input=None):
    """Runs `docker ARGS`; returns stdout (stripped). Raises CheckFailed when it fails and check is set."""
    done = subprocess.run(["docker", *args], capture_output=True, text=input is None or isinstance(input, str),
                          timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args[:3])} ... failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip() if isinstance(done.stdout, str) else done.stdout


def volume(suffix):
    name = f"{PREFIX}-{suffix}"
    docker("volume", "create", name)
    made_volumes.append(name)
    return name


def start(suffix, vol, *extra, env=None):
    """Starts a container of IMAGE with a read-only root and `vol` at /srv; returns (name, port)."""
    name = f"{PREFIX}-{suffix}"
    args = ["run", "-d", "--name", name, "--read-only", "-v", f"{vol}:/srv", "-p", "127.0.0.1::5000",
            "-e", f"api_token={TOKEN}", "-e", "DNSEXFIL_LOG_FORMAT=json",
            # The image checks every 30 s; the test looks every second so it need not wait.
            "--health-interval", "1s", "--health-start-period", "20s"]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    made_containers.append(name)
    docker(*args, *extra, IMAGE)
    port = int(docker("port", name, "5000/tcp").splitlines()[0].rsplit(":", 1)[1])
    wait_healthy(name)
    return name, port


def wait_healthy(name, limit=60):
    deadline = time.time() + limit
    status = ""
    while time.time() < deadline:
        status = docker("inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", name)
        if status == "running healthy":
            return
        if not status.startswith("running"):
            break
        time.sleep(0.5)
    raise CheckFailed(f"{name} did not become healthy ({status}); its log:\n{logs_of(name)}")


def unverified():
    """Like DSDL's client without a certificate configured: no verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request(port, method, path, body=None, headers=None, context=None, timeout=120):
    """One HTTPS request; returns (status, body bytes, the server's DER certificate)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context or unverified(), timeout=timeout)
    hdrs = {"Authorization": TOKEN}
    hdrs.update(headers or {})
    if body is not None and "Content-Type" not in hdrs:
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=hdrs)
        cert = conn.sock.getpeercert(binary_form=True)
        resp = conn.getresponse()
        return resp.status, resp.read(), cert
    finally:
        conn.close()


def tls_health(port, context, server_hostname):
    """GET /healthz over TLS to 127.0.0.1:port, the certificate checked by `context` for the name
    `server_hostname` (as a client that connects by that name does); returns the status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {server_hostname}\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                head += chunk
    return int(head.split(b" ", 2)[1])


def apply(port, csv_text, model=ESCU):
    envelope = {"data": csv_text, "meta": {"options": {
        "params": {"mode": "stage", "algo": model}, "args": ["src", "query", "rank"],
        "feature_variables": ["src", "query", "rank"], "model_name": model, "algo_name": "MLTKContainer",
        "mlspl_limits": {"max_inputs": "100000", "use_sampling": "true"}}, "feature_variables": ["src", "query", "rank"]}}
    status, body, _ = request(port, "POST", "/apply", json.dumps(envelope))
    return status, json.loads(body)


def sha256_colon(der):
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def logs_of(name):
    """The container's log (the service logs to stderr)."""
    return subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr


def logged_fingerprints(name):
    return re.findall(r'"fingerprint_sha256":"([0-9A-F:]+)"', logs_of(name))


def pid_of(name):
    return int(docker("inspect", "-f", "{{.State.Pid}}", name))


def proc_status(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    except OSError:
        return None


def cgroup_memory(name):
    """(usage, peak) in bytes from the container's memory cgroup, v1 or v2; None where not found."""
    cid = docker("inspect", "-f", "{{.Id}}", name)
    for base, usage, peak in [("/sys/fs/cgroup/memory/docker", "memory.usage_in_bytes", "memory.max_usage_in_bytes"),
                              ("/sys/fs/cgroup/system.slice/docker-" + cid + ".scope", "memory.current", "memory.peak"),
                              ("/sys/fs/cgroup/docker", "memory.current", "memory.peak")]:
        d = base if base.endswith(".scope") else os.path.join(base, cid)
        try:
            with open(os.path.join(d, usage)) as f:
                u = int(f.read())
            try:
                with open(os.path.join(d, peak)) as f:
                    p = int(f.read())
            except OSError:
                p = None
            return u, p
        except OSError:
            continue
    return None


def memory_line(name, what):
    mib = lambda b: f"{b / 1048576:.1f} MiB" if b is not None else "n/a"  # noqa: E731
    status = proc_status(pid_of(name))
    parts = []
    if status:
        rss = int(status["VmRSS"].split()[0]) * 1024
        hwm = int(status["VmHWM"].split()[0]) * 1024
        parts.append(f"process RSS {mib(rss)}, peak RSS {mib(hwm)}")
    cg = cgroup_memory(name)
    if cg:
        parts.append(f"cgroup usage {mib(cg[0])}, cgroup peak {mib(cg[1])}")
    stats = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name, check=False)
    if stats:
        parts.append(f"docker stats {stats}")
    line = f"memory {what}: " + "; ".join(parts)
    report.append(line)
    print(line, flush=True)
    return status


def fit_csv():
    """Four hours of the development log that hold tunnels from several sources, with labels."""
    with open(os.path.join(FIXTURES, "dev", "labels.csv"), newline="") as f:
        labels = {(r["src"], r["query"]): r["is_exfiltration"] for r in csv.DictReader(f)}
    with open(os.path.join(FIXTURES, "dev", "events.csv"), newline="") as f:
        events = list(csv.DictReader(f))
    start_time = min(float(e["_time"]) for e in events)
    hours = {8, 11, 20, 24}
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["src", "query", "rank", "_time", "is_exfiltration"])
    for e in events:
        if int((float(e["_time"]) - start_time) // 3600) in hours:
            w.writerow([e["src"], e["query"], e["rank"], e["_time"], labels.get((e["src"], e["query"]), "0")])
    return out.getvalue()


def main():
    global IMAGE
    IMAGE = sys.argv[1]

    # --- The image -------------------------------------------------------------------------
    size = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE))
    line = f"image {IMAGE}: {size / 1e6:.1f} MB ({size / 1048576:.1f} MiB), goal under 30 MB: " + (
        "met" if size < SIZE_GOAL else "NOT met")
    report.append(line)
    print(line, flush=True)
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", IMAGE))
    check(config.get("User") == "1001:0", "image user is 1001:0", str(config.get("User")))
    check("5000/tcp" in (config.get("ExposedPorts") or {}), "image exposes 5000")
    check("/srv" in (config.get("Volumes") or {}), "image declares the volume /srv")
    check((config.get("Healthcheck") or {}).get("Test", [])[1:] == ["/usr/local/bin/dnsexfil", "healthcheck"],
          "image health check is `dnsexfil healthcheck`", str(config.get("Healthcheck")))
    layers = json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", IMAGE))
    check(len(layers) == 2, "image has only its own 2 layers (binary and /tmp, /srv: FROM scratch)", str(len(layers)))

    # --- One container: user, read-only root, TLS, golden /apply, /v1/score ------------------
    data = volume("data")
    # Splunk's artifact is converted at start-up, in /tmp: a tmpfs, as the Kubernetes manifest's emptyDir.
    a, port_a = start("a", data, "--mount", "type=tmpfs,destination=/tmp,tmpfs-size=67108864,tmpfs-mode=1777",
                      "-v", f"{ARTIFACT}:/models/escu.tar.gz:ro",
                      env={"DNSEXFIL_MODELS": "/models/escu.tar.gz", "DNSEXFIL_TLS_NAMES": "dnsexfil.test"})
    ok(f"container {a} is healthy (`dnsexfil healthcheck` inside it, port {port_a} on 127.0.0.1)")
    status = proc_status(pid_of(a))
    if status:
        uid = status["Uid"].split()
        gid = status["Gid"].split()
        check(uid[0] == "1001" and gid[0] == "0", "the service runs as UID 1001, GID 0", f"Uid {uid} Gid {gid}")
    else:
        top = docker("top", a, "-o", "uid,gid,comm")
        check(re.search(r"^\s*1001\s+0\s+dnsexfil", top, re.M) is not None, "the service runs as UID 1001, GID 0", top)
    check(docker("inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", a) == "true", "the root filesystem is read-only")
    root = f"/proc/{pid_of(a)}/root"
    if os.path.isdir(f"{root}/srv"):
        srv = os.stat(f"{root}/srv")
        check(srv.st_uid == 1001 and srv.st_gid == 0 and srv.st_mode & 0o070 == 0o070,
              "the volume /srv is owned by 1001:0 and group-writable (filled from the image)", oct(srv.st_mode))
    denied = subprocess.run(["docker", "exec", a, "/usr/local/bin/dnsexfil", "synth", "--rows", "1", "-o", "/x.csv"],
                            capture_output=True, text=True)
    check(denied.returncode != 0 and "Read-only file system" in denied.stderr,
          "nothing can be written outside /srv", denied.stderr.strip())
    docker("exec", a, "/usr/local/bin/dnsexfil", "synth", "--rows", "1", "-o", "/srv/notebooks/data/x.csv")
    ok("UID 1001 can write in the volume /srv")
    health = docker("exec", a, "/usr/local/bin/dnsexfil", "healthcheck")
    check(health.startswith("healthy: https://127.0.0.1:5000/healthz answered 200"), "healthcheck over HTTPS", health)

    # TLS: the logged fingerprint is the served certificate's; pinning the stored certificate works.
    prints = logged_fingerprints(a)
    check(len(prints) == 1, "the certificate's SHA-256 is logged once", str(prints))
    _, _, served = request(port_a, "GET", "/healthz")
    check(sha256_colon(served) == prints[0], "the logged fingerprint is the served certificate's SHA-256",
          f"served {sha256_colon(served)}, logged {prints[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        docker("cp", f"{a}:/srv/tls/self-signed.crt", tmp)
        cert_file = os.path.join(tmp, "self-signed.crt")
        # As DSDL's client does with endpoint_cert_filename_or_path set: create_default_context(cafile=...),
        # check_hostname from endpoint_cert_check_hostname (off by default).
        pinned = ssl.create_default_context(cafile=cert_file)
        pinned.check_hostname = False
        status_code, _, _ = request(port_a, "GET", "/healthz", context=pinned)
        check(status_code == 200, "a client pinning /srv/tls/self-signed.crt (hostname check off) verifies the service")
        named = ssl.create_default_context(cafile=cert_file)
        check(tls_health(port_a, named, "dnsexfil.test") == 200,
              "... and with the hostname check on, for a name given in DNSEXFIL_TLS_NAMES")
        if hasattr(ssl, "VERIFY_X509_STRICT"):
            strict = ssl.create_default_context(cafile=cert_file)
            strict.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13's default context adds
            check(tls_health(port_a, strict, "localhost") == 200, "... and with strict X.509 checks (Python 3.13's default)")
        try:
            other = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                                    "-nodes", "-subj", "/CN=other", "-keyout", os.path.join(tmp, "k"), "-out",
                                    os.path.join(tmp, "other.crt"), "-days", "2"], capture_output=True)
        except FileNotFoundError:
            other = None
        if other is not None and other.returncode == 0:
            wrong = ssl.create_default_context(cafile=os.path.join(tmp, "other.crt"))
            wrong.check_hostname = False
            try:
                request(port_a, "GET", "/healthz", context=wrong)
                raise CheckFailed("a client pinning another certificate was not refused")
            except ssl.SSLError:
                ok("a client pinning another certificate is refused")

    # DSDL golden cases, with Splunk's ESCU model: the stock container's answers.
    for case in ["all_rank1_small", "tunneling", "random_large"]:
        golden = os.path.join(FIXTURES, "golden", case)
        with open(os.path.join(golden, "input.csv")) as f:
            status_code, answer = apply(port_a, f.read())
        if status_code != 200 or answer.get("status") != "success":
            raise CheckFailed(f"/apply golden case {case}: {str(answer)[:300]}")
        with open(os.path.join(golden, "expected.csv")) as f:
            expected = list(csv.reader(f))
        got = list(csv.reader(io.StringIO(answer["results"])))
        # The stock columns, then `suppressed_by` (the built-in allowlist is on by default).
        if got[0][:5] != expected[0] or got[0][5:] != ["suppressed_by"] or len(got) != len(expected):
            raise CheckFailed(f"/apply golden case {case}: {got[0]} {len(got)} rows, expected {expected[0]} {len(expected)}")
        worst, suppressed = 0.0, 0
        for g, e in zip(got[1:], expected[1:]):
            # A row under the built-in allowlist keeps its probability and gets label 0.
            label_ok = g[4] == e[4] or (g[5] and g[4] in ("0", "0.0"))
            suppressed += bool(g[5])
            if g[:3] != e[:3] or not label_ok or bool(g[3]) != bool(e[3]):
                raise CheckFailed(f"/apply golden case {case}: row {g} != expected {e}")
            if e[3]:
                worst = max(worst, abs(float(g[3]) - float(e[3])))
        check(worst <= 1e-6, f"/apply golden case {case}: {len(got) - 1} rows as the stock container answers them, "
              f"probabilities within {worst:.1e} ({suppressed} allowlisted rows labelled 0)")

    # The example of docs/rest-api.md: 20 tunnel names from one source, then www.google.com.
    ndjson = "".join(json.dumps({"src": "10.0.0.66", "query": hashlib.sha256(f"{i}\n".encode()).hexdigest()[:40] + ".t.exfil-example.net"}) + "\n"
                     for i in range(1, 21)) + json.dumps({"src": "10.0.0.5", "query": "www.google.com"}) + "\n"
    status_code, body, _ = request(port_a, "POST", "/v1/score?model=dnsexfil_v7", ndjson,
                                   {"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {TOKEN}"})
    scored = json.loads(body) if status_code == 200 else {}
    labels = [r.get("label") for r in scored.get("results", [])]
    check(status_code == 200 and scored.get("events") == 21 and labels == [1] * 20 + [0],
          "/v1/score: 20 tunnel names labelled 1, www.google.com 0 (default model dnsexfil_v7)", body[:300].decode())
    status_code, body, _ = request(port_a, "GET", "/v1/models")
    names = [m["name"] for m in json.loads(body)["models"]]
    check({"dnsexfil_v7", ESCU} <= set(names), "/v1/models lists the built-in and the ESCU model", str(names))
    idle = memory_line(a, "idle (after start-up and the requests above)")

    # The certificate survives a restart.
    docker("restart", "-t", "40", a)
    port_a = int(docker("port", a, "5000/tcp").splitlines()[0].rsplit(":", 1)[1])
    wait_healthy(a)
    _, _, served_again = request(port_a, "GET", "/healthz")
    check(served_again == served, "after `docker restart` the same certificate is served")

    # --- Any UID in group 0 (OpenShift's restricted policy) runs it on a fresh volume -----------
    anyuid, port_anyuid = start("anyuid", volume("anyuid"), "--user", "123456:0")
    status_code, _, _ = request(port_anyuid, "GET", "/readyz")
    check(status_code == 200 and "generated and stored" in logs_of(anyuid),
          "UID 123456 in group 0 serves from a fresh volume and stores its certificate in the group-writable /srv")
    docker("rm", "-f", anyuid)

    # --- /fit, seen by a second container on the same volume, kept after both are removed ----
    b, port_b = start("b", data)
    fit_rows = fit_csv()
    fit_body = {"data": fit_rows, "meta": {"options": {
        "params": {"algo": "dnsexfil", "epochs": "3", "seed": "7"}, "args": ["is_exfiltration", "src", "query", "rank", "_time"],
        "target_variable": ["is_exfiltration"], "feature_variables": ["src", "query", "rank", "_time"],
        "model_name": "ctfit", "algo_name": "MLTKContainer"},
        "feature_variables": ["src", "query", "rank", "_time"], "target_variables": ["is_exfiltration"]}}
    status_code, body, _ = request(port_a, "POST", "/fit", json.dumps(fit_body), timeout=600)
    fit = json.loads(body)
    check(status_code == 200 and fit.get("status") == "success" and "saved and serving" in fit.get("message", ""),
          f"/fit trained dnsexfil_ctfit in container a on {fit_rows.count(chr(10)) - 1} rows", fit.get("message", "")[:300])
    probe = json.dumps({"events": [{"src": "10.0.0.5", "query": "www.google.com"}]})
    status_code, body, _ = request(port_b, "POST", "/v1/score?model=dnsexfil_ctfit", probe)
    check(status_code == 200, "container b, on the same volume, serves the model a fitted", body[:300].decode())
    docker("rm", "-f", a, b)
    c, port_c = start("c", data)
    status_code, body, _ = request(port_c, "GET", "/v1/models")
    names = [m["name"] for m in json.loads(body)["models"]]
    check("dnsexfil_ctfit" in names, "after `docker rm` of both, a new container on the volume serves the fitted model", str(names))
    _, _, served_c = request(port_c, "GET", "/healthz")
    check(served_c == served, "... and the same certificate (stored in the volume)")

    # --- docker stop drains a request in flight -------------------------------------------------
    rows = docker("run", "--rm", "--entrypoint", "/usr/local/bin/dnsexfil", IMAGE, "synth", "--rows", "100000",
                  "--envelope", "--model-name", "dnsexfil_v7")
    payload = rows.encode()
    conn = http.client.HTTPSConnection("127.0.0.1", port_c, context=unverified(), timeout=120)
    conn.putrequest("POST", "/apply")
    conn.putheader("Authorization", TOKEN)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(payload)))
    conn.endheaders()
    half = len(payload) // 2
    conn.send(payload[:half])
    stopper = threading.Thread(target=lambda: docker("stop", "-t", "40", c, check=False))
    stopped_at = time.time()
    stopper.start()
    time.sleep(2)  # SIGTERM has arrived; the request is still uploading
    check(docker("inspect", "-f", "{{.State.Status}}", c) == "running" and "shutting down" in logs_of(c),
          "after SIGTERM (logged: shutting down) the container keeps running while a request is in flight")
    conn.send(payload[half:])
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    check(resp.status == 200 and answer.get("status") == "success" and answer["results"].count("\n") == 100001,
          "the request in flight at `docker stop` was answered in full (100,000 rows)", str(answer)[:300])
    stopper.join()
    exit_code = docker("inspect", "-f", "{{.State.ExitCode}}", c)
    check(exit_code == "0", f"`docker stop` took {time.time() - stopped_at:.1f} s and the service exited 0",
          f"exit code {exit_code}")

    # --- Memory: a 100,000-row request under --memory 256m -----------------------------------
    mem = volume("mem")
    d, port_d = start("d", mem, "--memory", "256m", "--memory-swap", "256m")
    memory_line(d, "idle (limit 256 MiB)")
    status_code, body, _ = request(port_d, "POST", "/apply", payload)
    answer = json.loads(body)
    check(status_code == 200 and answer.get("status") == "success" and answer["results"].count("\n") == 100001,
          "a 100,000-row /apply succeeds within --memory 256m", str(answer)[:300])
    for _ in range(2):
        request(port_d, "POST", "/apply", payload)
    state = docker("inspect", "-f", "{{.State.Status}} {{.State.OOMKilled}}", d)
    check(state == "running false", "three 100,000-row requests later the container runs and was not OOM-killed", state)
    memory_line(d, "peak (after three 100,000-row /apply)")
    time.sleep(3)
    memory_line(d, "3 s after them")

    print("\n".join(["", "container test summary:", *report]), flush=True)
    return idle


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    failed = None
    try:
        main()
    except CheckFailed as e:
        failed = str(e)
    except Exception as e:  # noqa: BLE001 - any error is a failed check
        failed = f"{type(e).__name__}: {e}"
    finally:
        for name in made_containers:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        for name in made_volumes:
            subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)
    if failed:
        print(f"FAIL: {failed}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("container test: all checks passed", flush=True)
