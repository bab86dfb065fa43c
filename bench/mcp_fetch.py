"""MCP `fetch` against a direct request, side by side (issue 12: added median <= 1 ms).

Usage: python3 mcp_fetch.py KZ BUNDLE IDENTITY_FILE UPSTREAM_URL CA_PEM [CALLS] [ROUNDS]

Both paths are driven from this one Python process, one request at a time:

- direct: `http.client.HTTPSConnection` with keep-alive to the upstream (TLS verified
  against CA_PEM);
- MCP: `kz server start --mcp` as a child, spoken to in raw newline-delimited JSON-RPC over
  its stdin/stdout (no SDK, so the client's own cost is a JSON line each way), one
  `tools/call fetch` per request; kz verifies the identity, decides, takes the credential from
  its cache, sends the request through its pooled upstream connection and scrubs the answer.

Rounds alternate the two paths; each round times CALLS requests after 50 warm-up ones. Prints
a markdown table (median and p99 per path over all rounds, and the added median).
"""

import http.client
import json
import ssl
import statistics
import subprocess
import sys
import time
import urllib.parse


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Mcp:
    def __init__(self, kz, bundle, identity):
        self.p = subprocess.Popen(
            # No rate limit: the default 100 refs/s per identity would refuse the benchmark.
            [kz, "server", "start", "--mcp", "--rate-limit", "0", "--bundle", bundle,
             "--identity-token-file", identity],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        self.next_id = 0
        self.request("initialize", {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "kz-bench", "version": "1"},
        })
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, msg):
        self.p.stdin.write(json.dumps(msg).encode() + b"\n")

    def request(self, method, params):
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise SystemExit("kz closed its stdout")
            msg = json.loads(line)
            if msg.get("id") == self.next_id:
                return msg

    def fetch(self, url):
        r = self.request("tools/call", {"name": "fetch", "arguments": {"resource": "api/bench", "url": url}})
        result = r.get("result") or {}
        if result.get("isError") or (result.get("structuredContent") or {}).get("status") != 200:
            raise SystemExit(f"fetch failed: {r}")

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


def main():
    kz, bundle, identity, url, ca = sys.argv[1:6]
    calls = int(sys.argv[6]) if len(sys.argv) > 6 else 2000
    rounds = int(sys.argv[7]) if len(sys.argv) > 7 else 5
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=ca)
    direct = http.client.HTTPSConnection(u.hostname, u.port, context=ctx)

    def get():
        direct.request("GET", u.path or "/")
        r = direct.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"direct: {r.status}")

    mcp = Mcp(kz, bundle, identity)
    times = {"direct": [], "mcp": []}
    per_round = {"direct": [], "mcp": []}
    for _ in range(rounds):
        for name, call in (("direct", get), ("mcp", lambda: mcp.fetch(url))):
            for _ in range(50):
                call()
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                call()
                ts.append((time.perf_counter_ns() - t0) / 1e6)
            times[name] += ts
            per_round[name].append(statistics.median(ts))
    mcp.close()
    d, m = times["direct"], times["mcp"]
    print("| path | requests | median | p99 | medians per round |\n|---|---|---|---|---|")
    for name, xs in (("direct (Python http.client, keep-alive, TLS)", d), ("MCP `fetch` through `kz server start --mcp`", m)):
        key = "direct" if name.startswith("direct") else "mcp"
        print(f"| {name} | {len(xs)} | {statistics.median(xs):.3f} ms | {percentile(xs, 99):.3f} ms | "
              f"{' / '.join(f'{x:.3f}' for x in per_round[key])} |")
    added = statistics.median(m) - statistics.median(d)
    print(f"\nadded median latency: {added:.3f} ms (target <= 1 ms); ratio {statistics.median(m) / statistics.median(d):.2f}x")


if __name__ == "__main__":
    main()
