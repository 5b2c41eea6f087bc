#!/usr/bin/env python3
"""Soak test: a real wattserve binary under sustained overload with a mixed workload.

Starts `wattserve serve` on a free port (minilm + smollm2), measures the rate it sustains with a
short closed-loop calibration, then offers a multiple of it (open loop, Poisson arrivals) for
the given duration: embeddings, non-streamed completions, and streamed chat completions of
which some hang up mid-stream. Samples the server's RSS, then reports:

- responses by status, and 5xx other than load shedding (503 with Retry-After);
- p50/p99 latency of admitted (200) requests;
- requests lost: sent and never answered (no status, no end of stream) within the client timeout;
- RSS over time.

Standard library only. Usage (see docs/testing.md; `make soak` runs it):

    tests/soak/soak.py --binary target/release/wattserve --duration 600 --overload 10 --out DIR
"""

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

EMBED_TEXTS = [
    "Energy per request is measured in joules.",
    "The grid's carbon intensity changes by the hour.",
    "int8 weights halve the memory traffic of a matrix product.",
    "A stream that is cut short must still end cleanly.",
]


def start_server(binary, models_dir):
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(
        f'[server]\nport = 0\nmodels_dir = "{models_dir}"\nmodels = ["minilm", "smollm2"]\n'
        "shutdown_grace_s = 5.0\n"
    )
    cfg.close()
    proc = subprocess.Popen(
        [binary, "serve", "--config", cfg.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "WATTSERVE_LOG": "warn,wattserve=info,wattserve::access=off"},
    )
    addr = None
    deadline = time.time() + 120
    while time.time() < deadline and addr is None:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            addr = m.group(1)
    if addr is None:
        proc.kill()
        sys.exit("the server did not start")
    # Drain the rest of its output in the background so that it never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    host, port = addr.rsplit(":", 1)
    while time.time() < deadline:
        try:
            status, _, _ = asyncio.run(request(host, int(port), "GET", "/ready", None, 5))
            if status == 200:
                return proc, host, int(port)
        except Exception:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not become ready")


async def request(host, port, method, path, body, timeout, stream_cut=None):
    """One HTTP/1.1 request on its own connection. Returns (status, ended_cleanly, seconds).

    For a stream, `ended_cleanly` means it ended with `data: [DONE]`; with `stream_cut` the
    client hangs up after that many chunks (counted as answered)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        data = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        writer.write(head.encode() + data)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        parts = status_line.split()
        if len(parts) < 2:
            return None, False, time.perf_counter() - t0
        status = int(parts[1])
        rest = await asyncio.wait_for(read_body(reader, stream_cut), timeout)
        return status, rest, time.perf_counter() - t0
    finally:
        writer.close()


async def read_body(reader, stream_cut):
    chunks = 0
    buf = b""
    while True:
        piece = await reader.read(65536)
        if not piece:
            return b"[DONE]" in buf or (b"data:" not in buf)
        buf = (buf + piece)[-4096:]
        chunks += piece.count(b"data:")
        if stream_cut is not None and chunks >= stream_cut:
            return True


def pick_request(rng):
    r = rng.random()
    if r < 0.7:
        n = rng.choice([1, 1, 1, 4, 16])
        return ("embed", "/v1/embeddings",
                {"model": "minilm", "input": [rng.choice(EMBED_TEXTS) for _ in range(n)]}, None)
    if r < 0.8:
        return ("complete", "/v1/completions",
                {"model": "smollm2", "prompt": "The cost of a request is", "max_tokens": rng.randint(8, 32),
                 "temperature": 0.7}, None)
    cut = rng.choice([None, None, 3, 10])
    return ("stream", "/v1/chat/completions",
            {"model": "smollm2", "stream": True, "max_tokens": rng.randint(16, 96),
             "messages": [{"role": "user", "content": "Tell me about energy."}]}, cut)


async def closed_loop(host, port, seconds, clients, timeout):
    done = 0
    rng = random.Random(1)
    end = time.time() + seconds

    async def client():
        nonlocal done
        while time.time() < end:
            kind, path, body, cut = pick_request(rng)
            try:
                status, _, _ = await request(host, port, "POST", path, body, timeout, cut)
                if status == 200:
                    done += 1
            except Exception:
                pass

    await asyncio.gather(*[client() for _ in range(clients)])
    return done / seconds


async def open_loop(host, port, rate, seconds, timeout, results, max_outstanding):
    rng = random.Random(2)
    end = time.time() + seconds
    tasks = set()
    not_sent = 0

    async def one(kind, path, body, cut):
        t_sent = time.time()
        try:
            status, clean, secs = await request(host, port, "POST", path, body, timeout, cut)
            results.append((kind, status, clean, secs, t_sent))
        except asyncio.TimeoutError:
            results.append((kind, "timeout", False, timeout, t_sent))
        except (ConnectionError, OSError) as e:
            results.append((kind, f"conn:{type(e).__name__}", False, 0.0, t_sent))

    while time.time() < end:
        await asyncio.sleep(rng.expovariate(rate))
        if len(tasks) >= max_outstanding:
            not_sent += 1
            continue
        t = asyncio.create_task(one(*pick_request(rng)))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 5)
    return not_sent


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


async def sample_rss(pid, seconds, every, samples):
    start = time.time()
    while time.time() - start < seconds:
        samples.append((round(time.time() - start), rss_mib(pid)))
        await asyncio.sleep(every)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/wattserve")
    ap.add_argument("--models-dir", default=os.path.abspath("models"))
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--overload", type=float, default=10, help="offered rate / sustained rate")
    ap.add_argument("--calibrate", type=float, default=20, help="seconds of closed-loop calibration")
    ap.add_argument("--timeout", type=float, default=120, help="client timeout per request, s")
    ap.add_argument("--max-outstanding", type=int, default=2000)
    ap.add_argument("--out", default="target/soak")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    proc, host, port = start_server(args.binary, args.models_dir)
    try:
        load_start = open("/proc/loadavg").read().split()[:3]
        sustained = asyncio.run(closed_loop(host, port, args.calibrate, 16, args.timeout))
        rate = max(1.0, sustained * args.overload)
        print(f"sustained {sustained:.1f} req/s (closed loop, 16 clients); offering {rate:.1f} req/s "
              f"for {args.duration:.0f} s", flush=True)
        results, rss = [], []

        async def run():
            sampler = asyncio.create_task(sample_rss(proc.pid, args.duration + args.timeout, 10, rss))
            not_sent = await open_loop(host, port, rate, args.duration, args.timeout, results,
                                       args.max_outstanding)
            sampler.cancel()
            return not_sent

        not_sent = asyncio.run(run())
        load_end = open("/proc/loadavg").read().split()[:3]
        alive = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed"

    by_status, by_kind = {}, {}
    for kind, status, clean, secs, _ in results:
        by_status.setdefault(str(status), 0)
        by_status[str(status)] += 1
        by_kind.setdefault(kind, {}).setdefault(str(status), 0)
        by_kind[kind][str(status)] += 1
    ok = sorted(secs for kind, status, clean, secs, _ in results if status == 200)
    lost = [r for r in results if r[1] == "timeout" or (r[1] == 200 and not r[2])]
    server_errors = {s: n for s, n in by_status.items() if s.isdigit() and int(s) >= 500 and s != "503"}
    pct = lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else None
    report = {
        "sustained_req_per_s": sustained,
        "offered_req_per_s": rate,
        "duration_s": args.duration,
        "sent": len(results),
        "not_sent_client_limit": not_sent,
        "by_status": by_status,
        "by_kind_and_status": by_kind,
        "server_errors_other_than_503": server_errors,
        "lost": len(lost),
        "admitted_p50_ms": pct(0.5),
        "admitted_p99_ms": pct(0.99),
        "rss_mib": rss,
        "server_alive_at_end": alive,
        "exit_code_after_sigterm": code,
        "load_average": {"start": load_start, "end": load_end},
    }
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(report, f, indent=1)
    rss_values = [v for _, v in rss if v is not None]
    print(json.dumps({k: v for k, v in report.items() if k != "rss_mib"}, indent=1))
    if rss_values:
        print(f"RSS MiB: start {rss_values[0]:.0f}, max {max(rss_values):.0f}, end {rss_values[-1]:.0f}, "
              f"median {statistics.median(rss_values):.0f}")
    failed = server_errors or lost or not alive or code != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
