#!/usr/bin/env python3
"""Figures for reach, against the release `agora` binary, all processes on loopback:

- how long a release published through a running host (over its admin socket) takes to reach
  ten other hosts joined through it;
- how long the network takes to heal after that bootstrap host restarts on a new port: from
  the restart until a release it publishes reaches all ten;
- `agora call` over HTTP and over iroh against `agora run` of the same agent, whole processes,
  as ratios measured in the same run;
- MCP `tools/call` latency through the official Python SDK, in one session.

Usage: tests/reach/figures.py AGORA_BINARY RIDE_DRIVER_WASM MCP_PYTHON
(`just reach-figures` builds and installs all three)
"""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

agora, driver_wasm, mcp_python = sys.argv[1:4]
work = tempfile.mkdtemp(prefix="agora-reach-")
OTHERS = 10
CALLS = 30
QUOTE = '{"trip": {"distance_m": 4000, "duration_s": 660}}'
hosts = []


def cli(data, *args, check=True):
    return subprocess.run([agora, "--data-dir", data, *args], capture_output=True, text=True, check=check)


def start(data, *extra):
    process = subprocess.Popen([agora, "--data-dir", data, "host", "--api", "127.0.0.1:0", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ticket = api = None
    for line in process.stdout:
        if line.startswith("ticket "):
            ticket = line.split()[1]
        if line.startswith("api "):
            api = line.split()[1]
            break
    hosts.append(process)
    return process, ticket, api


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except Exception:
        return None, b""


def reach(apis, manifest, limit=60):
    started = time.monotonic()
    for api in apis:
        while get(f"{api}/v1/agents/{manifest}")[0] != 200:
            if time.monotonic() - started > limit:
                raise SystemExit(f"{api} never learned of {manifest}")
            time.sleep(0.01)
    return time.monotonic() - started


def publish(data, name):
    out = cli(data, "publish", driver_wasm, "--name", name, "--price", "1000").stdout
    return re.search(r"^manifest\s+(\w+)", out, re.M).group(1)


def timed(command, runs=CALLS):
    times = []
    for _ in range(runs):
        started = time.monotonic()
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{' '.join(command[:5])}…: {run.stderr}")
        times.append((time.monotonic() - started) * 1000)
    return statistics.median(times), sorted(times)[int(len(times) * 0.9) - 1]


try:
    bootstrap = os.path.join(work, "bootstrap")
    cli(bootstrap, "keygen")
    first, ticket, first_api = start(bootstrap)
    apis = []
    for i in range(OTHERS):
        data = os.path.join(work, f"host{i}")
        cli(data, "keygen")
        apis.append(start(data, "--peer", ticket)[2])
    # Every host has a neighbour before anything is published.
    for api in apis:
        while b"agora_gossip_neighbours 0\n" in get(f"{api}/metrics")[1]:
            time.sleep(0.02)

    print(f"== a release published through a running host, reaching {OTHERS} hosts ==")
    spread = reach(apis, publish(bootstrap, "spread"))
    print(f"  published through the admin socket, on all {OTHERS}: {spread * 1000:8.1f} ms")

    first.send_signal(signal.SIGTERM)
    first.wait()
    restarted = time.monotonic()
    second, new_ticket, api = start(bootstrap)
    assert new_ticket != ticket
    manifest = publish(bootstrap, "healed")
    reach(apis, manifest)
    healed = time.monotonic() - restarted
    print(f"  bootstrap restarted on a new port, its next release on all {OTHERS}: "
          f"{healed * 1000:8.1f} ms from the restart")

    print(f"\n== one call of ride-driver quote, whole processes, median / p90 of {CALLS} ==")
    # One caller per transport: a caller's rate (20/s, bursts of 40) counts both, and these
    # whole-process calls come faster than that.
    caller, iroh_caller = os.path.join(work, "caller"), os.path.join(work, "iroh-caller")
    cli(caller, "keygen")
    cli(iroh_caller, "keygen")
    # The same agent on the host (to call) and in the caller's own data dir (to run locally).
    local = os.path.join(work, "local")
    cli(local, "keygen")
    cli(local, "publish", driver_wasm)
    cli(local, "run", "ride-driver", "-a", "quote", "-p", QUOTE)
    run = timed([agora, "--data-dir", local, "run", "ride-driver", "-a", "quote", "-p", QUOTE])
    http = timed([agora, "--data-dir", caller, "call", manifest, "-a", "quote", "-p", QUOTE, "--on", api])
    iroh = timed([agora, "--data-dir", iroh_caller, "call", manifest, "-a", "quote", "-p", QUOTE, "--on", new_ticket])
    print(f"  {'agora run (anchor)':<26} {run[0]:7.1f} ms  p90 {run[1]:7.1f} ms   1.00x")
    for label, (median, p90) in [("agora call over HTTP", http), ("agora call over iroh", iroh)]:
        print(f"  {label:<26} {median:7.1f} ms  p90 {p90:7.1f} ms   {median / run[0]:.2f}x")

    print(f"\n== MCP tools/call through the Python SDK, {CALLS} calls in one session ==")
    script = f"""
import asyncio, json, time
from mcp import Client
async def main():
    async with Client({api + '/mcp'!r}, mode="auto", cache=None) as client:
        tools = await client.list_tools()
        name = next(t.name for t in tools.tools if t.name.startswith("healed."))
        times = []
        for _ in range({CALLS}):
            started = time.monotonic()
            result = await client.call_tool(name, {{"action": "quote", "payload": json.loads({QUOTE!r})}})
            times.append((time.monotonic() - started) * 1000)
            assert not result.is_error, result
        times.sort()
        print(json.dumps([times[len(times) // 2], times[int(len(times) * 0.9) - 1], client.protocol_version]))
asyncio.run(main())
"""
    median, p90, version = json.loads(subprocess.run([mcp_python, "-c", script], capture_output=True,
                                                     text=True, check=True).stdout)
    print(f"  tools/call ({version})          {median:7.2f} ms  p90 {p90:7.2f} ms")
finally:
    for process in hosts:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in hosts:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
