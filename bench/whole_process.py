#!/usr/bin/env python3
"""Whole-process benchmarks of kz (issue 2's targets), side by side in one run.

* `kz run -- true` with 10 `local` and 10 `env` secrets against the bare `true`:
  median added time (target <= 1.5 ms) and kz's peak RSS (target <= 10 MiB);
* the shell hook's no-change path, `kz __hook-env` with an unchanged state (target < 5 ms).

Runs alternate (bare, kz, hook, ...) so machine noise hits all of them alike; medians and p90
are reported. Everything happens in temporary HOME/XDG directories. Usage:

    bench/whole_process.py [--runs N] [--kz PATH] [--write docs/benchmarks.md]
"""
import os, shutil, statistics, subprocess, sys, tempfile, time, platform, datetime

QUIET = [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0), (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)]
import common


def spawn(argv, env):
    """Runs argv; returns (seconds, exit status). Timing only: see peak_rss for memory."""
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=QUIET)
    _, status = os.waitpid(pid, 0)
    return (time.perf_counter_ns() - t0) / 1e9, status

def peak_rss(launcher, argv, env):
    """Peak RSS (KiB) of argv, measured by the tiny C launcher (bench/spawn_rss.c)."""
    out = subprocess.run([launcher] + argv, env=env, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0])

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def main():
    a, kz = common.setup("kz start-up, hook and memory", 400)
    true = shutil.which("true")
    tmp = tempfile.mkdtemp(prefix="kz-bench-")
    try:
        launcher = os.path.join(tmp, "spawn_rss")
        subprocess.run(["cc", "-O2", "-o", launcher, os.path.join(common.ROOT, "bench", "spawn_rss.c")], check=True)
        proj = os.path.join(tmp, "proj")
        os.makedirs(proj)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.path.join(tmp, "home"),
               "XDG_CONFIG_HOME": os.path.join(tmp, "config"), "XDG_DATA_HOME": os.path.join(tmp, "data"),
               "XDG_CACHE_HOME": os.path.join(tmp, "cache"), "LANG": "C"}
        lines = ["[secrets]"]
        for i in range(10):
            lines.append(f'LOCAL_{i} = "local://proj/LOCAL_{i}"')
            lines.append(f'ENV_{i} = "env://BENCH_ENV_{i}"')
            env[f"BENCH_ENV_{i}"] = f"env-value-{i}-" + "x" * 24
        with open(os.path.join(proj, ".keyzero.toml"), "w") as f:
            f.write("\n".join(lines) + "\n")
        for i in range(10):
            subprocess.run([kz, "--dir", proj, "put", f"LOCAL_{i}", "--stdin"], input=f"local-value-{i}-" + "y" * 32,
                           text=True, env=env, check=True, cwd=proj, capture_output=True)
        subprocess.run([kz, "--dir", proj, "allow"], env=env, check=True, cwd=proj, capture_output=True)
        # The hook's state for this project, as the shell would hold it.
        out = subprocess.run([kz, "__hook-env", "--shell", "bash", "--state", ""], env=env, cwd=proj,
                             capture_output=True, text=True, check=True).stdout
        state = [l for l in out.splitlines() if l.startswith("_kz_state=")][-1].split("=", 1)[1].strip("'")
        check = subprocess.run([kz, "__hook-env", "--shell", "bash", "--state", state], env=env, cwd=proj,
                               capture_output=True, text=True, check=True)
        assert check.stdout == "", "the no-change path printed something"
        os.chdir(proj)  # __hook-env discovers from its working directory
        cmds = {
            "bare": [true],
            "kz": [kz, "--dir", proj, "run", "--", true],
            "hook": [kz, "__hook-env", "--shell", "bash", "--state", state],
        }
        for _ in range(20):  # warm the page cache
            for c in cmds.values():
                spawn(c, env)
        res = {k: [] for k in cmds}
        for _ in range(a.runs):
            for k, c in cmds.items():
                t, st = spawn(c, env)
                if st != 0:
                    sys.exit(f"{k} failed with status {st}")
                res[k].append(t)
        rss = {k: [peak_rss(launcher, c, env) for _ in range(5)] for k, c in cmds.items()}
        med = {k: statistics.median(v) * 1e3 for k, v in res.items()}
        p90 = {k: pct(v, 90) * 1e3 for k, v in res.items()}
        added = med["kz"] - med["bare"]
        kz_rss = max(rss["kz"]) / 1024
        rows = [
            ("`true` (bare)", f"{med['bare']:.3f}", f"{p90['bare']:.3f}", f"{max(rss['bare'])/1024:.1f}", "—"),
            ("`kz run -- true`, 10 local + 10 env", f"{med['kz']:.3f}", f"{p90['kz']:.3f}", f"{kz_rss:.1f}",
             f"added {added:.3f} ms (target ≤ 1.5 ms); peak RSS target ≤ 10 MiB"),
            ("`kz __hook-env`, nothing changed", f"{med['hook']:.3f}", f"{p90['hook']:.3f}", f"{max(rss['hook'])/1024:.1f}",
             "target < 5 ms, no provider call"),
        ]
        table = ["| command | median ms | p90 ms | peak RSS MiB | note |", "|---|---|---|---|---|"]
        table += [f"| {' | '.join(r)} |" for r in rows]
        meta = (f"{a.runs} alternating runs each, {datetime.date.today().isoformat()}, {platform.machine()}, "
                f"{os.cpu_count()} cores, Linux {platform.release()}, release build")
        text = "\n".join(table)
        print(meta)
        print(text)
        if a.write:
            common.write_block(a.write, "whole-process", meta, text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    main()
