"""What a user waits for: 100,000-row requests over loopback HTTP, timed by curl, next to the
forward pass of the same rank-1 rows by candle (the `forward` bench, as a co-process) and by
numpy/OpenBLAS, all alternating within one run. Driven by benches/http_roundtrip.sh.

  http_roundtrip.py prepare EVENTS_CSV OUT_DIR ROWS ESCU_NAME DEFAULT_NAME
  http_roundtrip.py run OUT_DIR PORT TOKEN SERVER_LOG ROUNDS ESCU_NAME FLOOR_PORT FORWARD_COMMAND...

FLOOR_PORT is a server that reads any body and answers a fixed one, doing no other work
(benches/http_floor.rs): the default /apply posted to it is what HTTP alone costs.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np


def prepare(events_csv, out, rows, escu_name, default_name):
    """The dev log repeated to `rows` rows, as a DSDL envelope per model and as NDJSON."""
    rows = int(rows)
    with open(events_csv, encoding="utf-8") as f:
        header, *lines = f.read().splitlines()
    data = [lines[i % len(lines)] for i in range(rows)]
    csv = header + "\n" + "\n".join(data) + "\n"
    with open(os.path.join(out, "rows.csv"), "w", encoding="utf-8") as f:
        f.write(csv)
    for tag, name in (("escu", escu_name), ("default", default_name)):
        envelope = {
            "data": csv,
            "meta": {
                "options": {
                    "params": {"algo": name},
                    "model_name": name,
                    "algo_name": "MLTKContainer",
                    "mlspl_limits": {"max_inputs": str(rows)},
                },
                "feature_variables": ["src", "query", "rank", "_time"],
            },
        }
        # As Splunk's Python client writes it (json.dumps: ASCII, `\\` for backslashes).
        with open(os.path.join(out, f"apply_{tag}.json"), "w", encoding="ascii") as f:
            f.write(json.dumps(envelope))
    columns = header.split(",")
    with open(os.path.join(out, "score.ndjson"), "w", encoding="ascii") as f:
        for line in data:
            # The dev log has no quoted cells: a plain split is its CSV reading.
            cells = dict(zip(columns, line.split(",")))
            event = {"src": cells["src"], "query": cells["query"],
                     "rank": float(cells["rank"]), "time": cells["_time"]}
            f.write(json.dumps(event) + "\n")


def curl(url, token, body, content_type):
    """One POST with curl; returns (total seconds, bytes sent, bytes received)."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--fail",
         "-H", f"Authorization: {token}", "-H", f"Content-Type: {content_type}",
         # No `Expect: 100-continue` round trip: Splunk's client does not send it either.
         "-H", "Expect:",
         "-w", "%{time_total} %{size_upload} %{size_download}",
         "--data-binary", "@" + body, url],
        check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


class NumpyMlp:
    """The network in numpy (float32, OpenBLAS), from the weights the forward bench wrote."""

    def __init__(self, out, name):
        with open(os.path.join(out, f"{name}.json")) as f:
            manifest = json.load(f)

        def raw(file, shape):
            return np.fromfile(os.path.join(out, file), dtype="<f4").reshape(shape)

        self.x = raw(manifest["x"], (manifest["rows"], manifest["input"]))
        t = {k: raw(v["file"], v["shape"]) for k, v in manifest["tensors"].items()}
        self.norm = (t["norm.mean"], t["norm.std"]) if "norm.mean" in t else None
        # Transposed once, contiguous: x @ W^T as a plain row-major GEMM.
        self.w = [np.ascontiguousarray(t[f"{layer}.weight"].T)
                  for layer in ("layer_1", "layer_2", "layer_out")]
        self.b = [t[f"{layer}.bias"] for layer in ("layer_1", "layer_2", "layer_out")]

    def forward(self):
        x = self.x
        if self.norm is not None:
            x = (x - self.norm[0]) / self.norm[1]
        h = np.maximum(x @ self.w[0] + self.b[0], 0)
        h = np.maximum(h @ self.w[1] + self.b[1], 0)
        z = (h @ self.w[2] + self.b[2]).ravel()
        with np.errstate(over="ignore"):  # exp(-z) is inf for very negative z: p = 0
            return 1 / (1 + np.exp(-z))

    def time(self, runs):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            self.forward()
            times.append((time.perf_counter() - t) * 1e3)
        return times


def server_stages(log_path, offset):
    """The per-stage timings the server logged after `offset` (its JSON log), and the new end."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        text = f.read()
        end = f.tell()
    stages = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        fields = record.get("fields", {})
        if fields.get("message") == "request stages":
            for key, value in fields.items():
                if key.endswith("_ms"):
                    stages[key[:-3]] = float(value)
        elif fields.get("message") == "answer sent":
            stages["write"] = float(fields["write_ms"])
    return stages, end


FLOOR = "HTTP alone (no work)"


def run(out, port, token, log_path, rounds, escu_name, floor_port, forward_cmd):
    rounds = int(rounds)
    base = f"http://127.0.0.1:{port}"
    requests = [
        ("/apply ESCU", f"{base}/apply", "apply_escu.json", "application/json", "escu"),
        ("/apply default", f"{base}/apply", "apply_default.json", "application/json", "default"),
        ("/v1/score NDJSON default", f"{base}/v1/score", "score.ndjson",
         "application/x-ndjson", "default"),
        ("/v1/score NDJSON ESCU", f"{base}/v1/score?model={escu_name}", "score.ndjson",
         "application/x-ndjson", "escu"),
        # The default /apply's body to a server that answers its answer's size and does nothing
        # else: no request of that size can take less.
        (FLOOR, f"http://127.0.0.1:{floor_port}/apply", "apply_default.json", "application/json",
         "default"),
    ]
    forward = subprocess.Popen(forward_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert forward.stdout.readline().strip() == "ready"
    nets = {name: NumpyMlp(out, name) for name in ("escu", "default")}
    rank1 = {name: net.x.shape[0] for name, net in nets.items()}
    http = {r[0]: [] for r in requests}
    sizes = {}
    stages = {r[0]: {} for r in requests}
    candle = {n: [] for n in nets}
    tensors = {n: [] for n in nets}
    numpy_times = {n: [] for n in nets}
    offset = os.path.getsize(log_path)
    # Warm up every side once (first-touch page faults, thread pools).
    for _, url, body, ctype, _ in requests:
        curl(url, token, os.path.join(out, body), ctype)
    for name, net in nets.items():
        net.time(2)
        forward.stdin.write(f"{name} 2\n")
        forward.stdin.flush()
        forward.stdout.readline()
    _, offset = server_stages(log_path, offset)
    for _ in range(rounds):
        for label, url, body, ctype, _ in requests:
            # The server hands large requests' memory back after 500 ms without one: a
            # user's next batch comes minutes later, so every request here finds it returned.
            time.sleep(0.6)
            total, up, down = curl(url, token, os.path.join(out, body), ctype)
            http[label].append(total * 1e3)
            sizes[label] = (up, down)
            seen, offset = server_stages(log_path, offset)
            if seen:
                # What no server stage covers: the client, the kernel's loopback, hyper.
                seen["rest"] = total * 1e3 - sum(seen.values())
            seen["total"] = total * 1e3
            for k, v in seen.items():
                stages[label].setdefault(k, []).append(v)
        for name, net in nets.items():
            forward.stdin.write(f"{name} 3\n")
            forward.stdin.flush()
            candle[name] += [float(v) for v in forward.stdout.readline().split()]
            forward.stdin.write(f"{name} 3 candle\n")
            forward.stdin.flush()
            tensors[name] += [float(v) for v in forward.stdout.readline().split()]
            numpy_times[name] += net.time(3)
    forward.stdin.close()
    forward.wait()
    # A stage table left empty would pass unnoticed (the log target moved once): fail instead.
    for label, url, _, _, _ in requests:
        if label != FLOOR and "features" not in stages[label]:
            sys.exit(f"no stages debug line for {label} in the server log: are RUST_LOG's"
                     " targets in http_roundtrip.sh still the handlers' modules?")

    def best(xs):
        return min(xs)

    def median(xs):
        return sorted(xs)[len(xs) // 2]

    print(f"\n{rounds} alternating rounds; best and median in ms")
    print("\nforward pass of the rank-1 rows, all at once (candle = the service's Mlp::predict):")
    for name in nets:
        c, n = candle[name], numpy_times[name]
        print(f"  {name:8} {rank1[name]:>6} rows: candle best {best(c):7.2f} median {median(c):7.2f}"
              f" | numpy best {best(n):7.2f} median {median(n):7.2f}"
              f" | candle/numpy {best(c) / best(n):.2f} (best) {median(c) / median(n):.2f} (median)")
        t = tensors[name]
        print(f"  {name:8} through candle's tensors: best {best(t):7.2f} median {median(t):7.2f}"
              f" | /numpy {best(t) / best(n):.2f} (best) {median(t) / median(n):.2f} (median)")
    print("\nHTTP round trip (curl, from the request's first byte to the answer's last):")
    for label, _, _, _, net in requests:
        h, n = http[label], numpy_times[net]
        up, down = sizes[label]
        print(f"  {label:26} {up / 1e6:.1f} MB in, {down / 1e6:.1f} MB out: best {best(h):7.2f}"
              f" median {median(h):7.2f} | /numpy {best(h) / best(n):.2f} (best)"
              f" {median(h) / median(n):.2f} (median) | /candle {best(h) / best(candle[net]):.2f}")
    floor = http[FLOOR]
    print(f"\n  {FLOOR} is the floor under a request of /apply's size: at best {best(floor):.2f} ms,"
          f" {best(floor) / best(numpy_times['default']):.2f} times numpy's forward pass of the"
          f" default network and {best(floor) / best(numpy_times['escu']):.2f} times the ESCU"
          f" network's (best)")
    for label in ("/apply ESCU", "/apply default"):
        print(f"  {label}: best {best(http[label]) - best(floor):.2f} ms above the floor, median"
              f" {median(http[label]) - median(floor):.2f}")
    print("\nper stage, median ms (the server's debug log; rest = curl's total less the stages:"
          " client, loopback, hyper; /v1/score writes its answer as the client reads it, so its"
          " write includes serialising the results)")
    names = ["read", "decode", "features", "forward", "encode", "write", "rest", "total"]
    print("  | request | " + " | ".join(names) + " |")
    print("  " + "|---" * (len(names) + 1) + "|")
    for label, _, _, _, _ in requests:
        if label == FLOOR:
            continue
        seen = stages[label]
        cells = [f"{median(seen[k]):.1f}" if k in seen else "" for k in names]
        print(f"  | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(*sys.argv[2:7])
    elif sys.argv[1] == "run":
        run(*sys.argv[2:9], sys.argv[9:])
    else:
        sys.exit(__doc__)
