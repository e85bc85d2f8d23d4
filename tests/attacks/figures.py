#!/usr/bin/env python3
"""Figures for hostile input against the release `agora` binary, printed as a table:

- peak resident memory of one `agora run` under each memory attack of the hostile guest, beside
  the same process running a trivial call;
- the HTTP edge of a live `agora host --api` with its default limits: how long a stalled client
  (slowloris) keeps its connection, how a normal client fares meanwhile, and how long a request
  over the concurrency limit waits for its 503.

Usage: tests/attacks/figures.py AGORA_BINARY HOSTILE_WASM   (`just attack-figures` builds both)
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

agora, hostile_wasm = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp(prefix="agora-attacks-")
data = os.path.join(work, "data")


def cli(*args, check=True):
    return subprocess.run([agora, "--data-dir", data, *args], capture_output=True, text=True, check=check)


cli("keygen")
published = cli("publish", hostile_wasm).stdout
manifest = next(line.split()[-1] for line in published.splitlines() if line.startswith("manifest"))
# Compiled once here, so every run below loads from the compiled-code cache.
cli("run", manifest, "--action", "echo", "--payload", "{}")


def peak_rss_mb(action, payload="{}", fuel=None):
    args = ["/usr/bin/time", "-f", "%M", agora, "--data-dir", data, "run", manifest, "--action", action,
            "--payload", payload]
    if fuel:
        args += ["--fuel", str(fuel)]
    run = subprocess.run(args, capture_output=True, text=True)
    lines = run.stderr.strip().splitlines()
    kb = int(lines[-1])
    # What the run said about the call: its error, or its fuel on success.
    said = next((l for l in lines if l.startswith("error")), None) or next(
        (l for l in lines if "fuel" in l), "?")
    return kb / 1024, said.strip()


print("== peak resident memory of `agora run` (MB) ==")
baseline, _ = peak_rss_mb("echo", "{}")
print(f"  {'echo (baseline)':<18} {baseline:7.1f}")
for action, payload, fuel in [
    ("grow-memory", "{}", None), ("big-output", "{}", None), ("big-log", "{}", None),
    ("big-call-payload", "{}", None), ("fields-hoard", "{}", None), ("log-flood", "{}", None),
    ("empty-log-flood", "{}", None), ("stdout-flood", "{}", None), ("nul-keys", "{}", None),
    ("kv-hog", "{}", None), ("loop", "{}", 10_000_000_000),
]:
    mb, outcome = peak_rss_mb(action, payload, fuel)
    print(f"  {action:<18} {mb:7.1f}   {outcome[:90]}")

# The HTTP edge, default limits.
host = subprocess.Popen([agora, "--data-dir", data, "host", "--api", "127.0.0.1:0"],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
api = None
for line in host.stdout:
    if line.startswith("api http://"):
        api = line.split("http://")[1].strip()
        break
addr = (api.split(":")[0], int(api.split(":")[1]))


def get(path="/healthz"):
    s = socket.create_connection(addr)
    started = time.monotonic()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    s.close()
    return int(answer.split(b" ")[1]), time.monotonic() - started


print("== slowloris: 500 connections that stall in their headers ==")
stalled = []
for _ in range(500):
    s = socket.create_connection(addr)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: loc")
    stalled.append((s, time.monotonic()))
latencies = sorted(get()[1] for _ in range(200))
print(f"  a normal client meanwhile: p50 {statistics.median(latencies) * 1e3:.2f} ms, "
      f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1e3:.2f} ms over 200 requests")
cut = []
for s, opened in stalled:
    s.settimeout(30)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    cut.append(time.monotonic() - opened)
    s.close()
print(f"  stalled connections closed after {min(cut):.2f} to {max(cut):.2f} s (header timeout 10 s)")

print("== overload: 256 requests in flight, then one more ==")
slow = []
for i in range(256):
    s = socket.create_connection(addr)
    path = ["/v1/receipts", "/v1/feedback", "/v1/invoke"][i % 3]
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              f"Content-Length: 100\r\n\r\n{{".encode())
    slow.append(s)
time.sleep(0.5)
status, took = get("/v1/agents")
print(f"  request 257 answered {status} after {took * 1e3:.2f} ms")
for s in slow:
    s.close()
host.terminate()
host.wait()
