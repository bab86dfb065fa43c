#!/usr/bin/env python3
"""Backend benchmarks (issue 3's targets), against real local servers started here.

* 100 secrets from OpenBao vs 1: wall time of `kz export` (target: at most 3x);
* 50 secrets from moto (Secrets Manager) vs 1: wall time (target: at most 3x) and the number of
  Secrets Manager API calls, counted by a forwarding proxy in front of moto (target: at most 5);
* the 1Password stand-in `op` with a 1-second delay per invocation: 20 secrets in about one
  delay, not twenty.

Servers run on free loopback ports and are stopped by PID. Usage:

    bench/backends.py [--runs N] [--kz PATH] [--write docs/benchmarks.md]
"""
import datetime, http.client, json, os, platform, shutil, socket, statistics, subprocess
import sys, tempfile, threading, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VENV_BIN = os.path.join(os.environ.get("KZ_TOOLS_VENV", os.path.expanduser("~/.cache/keyzero-venv")), "bin")

import common


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"server at {url} did not start")


def tool(name):
    p = shutil.which(name, path=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    if not p:
        sys.exit(f"{name} not found: run scripts/test first (it installs the Python tools into {VENV_BIN})")
    return p


class Counter:
    """A forwarding HTTP proxy that counts requests by X-Amz-Target."""

    def __init__(self, upstream_port):
        self.counts = {}
        self.lock = threading.Lock()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", self.path)
                with counter.lock:
                    counter.counts[target] = counter.counts.get(target, 0) + 1
                c = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                c.request(self.command, self.path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = do_PUT = forward

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self):
        with self.lock:
            self.counts = {}


STANDIN_OP = r'''#!/usr/bin/env python3
# Stand-in for the 1Password CLI (no real `op` can run here): `op read REF`, `op inject`,
# `op whoami`, sleeping STANDIN_OP_DELAY seconds per invocation like the real CLI's ~1 s.
import json, os, re, sys, time
time.sleep(float(os.environ.get("STANDIN_OP_DELAY", "0")))
args = [a for a in sys.argv[1:] if not a.startswith("--account")]
vault = json.load(open(os.environ["STANDIN_OP_VAULT"]))
def get(ref):
    if ref not in vault:
        sys.stderr.write('[ERROR] 2026/11/22 00:00:00 "%s" isn\'t an item\n' % ref); sys.exit(1)
    return vault[ref]
if args[:1] == ["read"]:
    sys.stdout.write(get(args[1]) + "\n")
elif args[:1] == ["inject"]:
    t = sys.stdin.read()
    sys.stdout.write(re.sub(r"\{\{\s*(op://[^}\s]+)\s*\}\}", lambda m: get(m.group(1)), t))
elif args[:1] == ["whoami"]:
    print("stand-in")
else:
    sys.stderr.write("stand-in op: unsupported %r\n" % args); sys.exit(2)
'''


def timed(cmd, env, cwd, runs):
    xs = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True)
        xs.append(time.perf_counter() - t0)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr.decode()}")
    return statistics.median(xs) * 1e3


def project(root, name, providers, secrets):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, ".keyzero.toml"), "w") as f:
        f.write(providers + "\n[secrets]\n" + "".join(f"{k} = {v}\n" for k, v in secrets))
    return d


def main():
    a, kz = common.setup("kz against local backends", 15)
    tmp = tempfile.mkdtemp(prefix="kz-bench-backends-")
    procs = []
    try:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.path.join(tmp, "home"),
               "XDG_CONFIG_HOME": os.path.join(tmp, "config"), "XDG_DATA_HOME": os.path.join(tmp, "data"),
               "XDG_CACHE_HOME": os.path.join(tmp, "cache"), "LANG": "C", "KEYZERO_TRUST": "1",
               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
        os.makedirs(env["HOME"])
        # OpenBao
        bao_port = free_port()
        bao_log = open(os.path.join(tmp, "bao.log"), "w")
        procs.append(subprocess.Popen([tool("bao"), "server", "-dev", "-dev-root-token-id=root",
                                       f"-dev-listen-address=127.0.0.1:{bao_port}"], stdout=bao_log, stderr=bao_log))
        wait_http(f"http://127.0.0.1:{bao_port}/v1/sys/health")
        for i in range(100):
            req = urllib.request.Request(f"http://127.0.0.1:{bao_port}/v1/secret/data/bench/s{i}", method="POST",
                                         data=json.dumps({"data": {"value": f"v{i}"}}).encode(),
                                         headers={"X-Vault-Token": "root"})
            urllib.request.urlopen(req).read()
        vault_providers = f'[providers.vault]\ntype = "hashicorp"\naddress = "http://127.0.0.1:{bao_port}"\n'
        venv = dict(env, VAULT_TOKEN="root")
        v1 = project(tmp, "vault1", vault_providers, [("S0", '{ provider = "vault", ref = "secret/bench/s0" }')])
        v100 = project(tmp, "vault100", vault_providers,
                       [(f"S{i}", f'{{ provider = "vault", ref = "secret/bench/s{i}" }}') for i in range(100)])
        # moto, behind the counting proxy
        moto_port = free_port()
        moto_log = open(os.path.join(tmp, "moto.log"), "w")
        procs.append(subprocess.Popen([tool("moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                                      stdout=moto_log, stderr=moto_log))
        wait_http(f"http://127.0.0.1:{moto_port}/moto-api/")
        counter = Counter(moto_port)
        seed = subprocess.run([sys.executable, "-c", f"""
import json, urllib.request
for i in range(50):
    req = urllib.request.Request('http://127.0.0.1:{moto_port}/', method='POST',
        data=json.dumps({{'Name': 'bench/s%d' % i, 'SecretString': 'v%d' % i}}).encode(),
        headers={{'X-Amz-Target': 'secretsmanager.CreateSecret', 'Content-Type': 'application/x-amz-json-1.1',
                 'Authorization': 'AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=x'}})
    urllib.request.urlopen(req).read()
"""])
        if seed.returncode != 0:
            sys.exit("seeding moto failed")
        aws_providers = f'[providers.aws]\nregion = "us-east-1"\nendpoint_url = "http://127.0.0.1:{counter.port}"\n'
        a1 = project(tmp, "aws1", aws_providers, [("S0", '{ provider = "aws", ref = "sm://bench/s0" }')])
        a50 = project(tmp, "aws50", aws_providers,
                      [(f"S{i}", f'{{ provider = "aws", ref = "sm://bench/s{i}" }}') for i in range(50)])
        # 1Password stand-in with a 1 s delay
        op = os.path.join(tmp, "op")
        with open(op, "w") as f:
            f.write(STANDIN_OP)
        os.chmod(op, 0o755)
        vault_file = os.path.join(tmp, "op-vault.json")
        json.dump({f"op://Dev/item{i}/password": f"p{i}" for i in range(20)}, open(vault_file, "w"))
        op_env = dict(env, STANDIN_OP_VAULT=vault_file, STANDIN_OP_DELAY="1")
        op_providers = f'[providers.op]\ntype = "1password"\nop_path = "{op}"\n'
        o20 = project(tmp, "op20", op_providers,
                      [(f"S{i}", f'{{ provider = "op", ref = "op://Dev/item{i}/password" }}') for i in range(20)])

        def kz_export(d, e):
            return [kz, "--dir", d, "export", "--format", "json"], e

        rows = []
        t1 = timed(*kz_export(v1, venv), v1, a.runs)
        t100 = timed(*kz_export(v100, venv), v100, a.runs)
        rows.append(("OpenBao: 1 secret", f"{t1:.1f}", "—", ""))
        rows.append(("OpenBao: 100 secrets", f"{t100:.1f}", f"{t100 / t1:.2f}x", "target ≤ 3x"))
        t1 = timed(*kz_export(a1, env), a1, a.runs)
        counter.reset()
        t50 = timed(*kz_export(a50, env), a50, a.runs)
        with counter.lock:
            sm_calls = sum(v for k, v in counter.counts.items() if k.startswith("secretsmanager.")) / a.runs
            detail = ", ".join(f"{k.split('.')[-1]} {v // a.runs}" for k, v in sorted(counter.counts.items()))
        rows.append(("moto (Secrets Manager): 1 secret", f"{t1:.1f}", "—", ""))
        rows.append(("moto (Secrets Manager): 50 secrets", f"{t50:.1f}", f"{t50 / t1:.2f}x",
                     f"target ≤ 3x; {sm_calls:.0f} SM calls per run ({detail}), target ≤ 5"))
        t20 = timed(*kz_export(o20, op_env), o20, 3)
        rows.append(("1Password stand-in (1 s per `op` call): 20 secrets", f"{t20:.0f}", f"{t20 / 1000:.2f} delays",
                     "target: about one delay"))
        table = ["| case | median ms | ratio | note |", "|---|---|---|---|"]
        table += [f"| {' | '.join(r)} |" for r in rows]
        meta = (f"{a.runs} runs per case, {datetime.date.today().isoformat()}, {platform.machine()}, "
                f"{os.cpu_count()} cores, release build, servers on loopback")
        text = "\n".join(table)
        print(meta)
        print(text)
        if a.write:
            common.write_block(a.write, "backends", meta, text)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
