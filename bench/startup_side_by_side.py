#!/usr/bin/env python3
"""`kz run -- true` start-up of several kz executables, side by side in one run.

The same project (10 `local` + 10 `env` secrets, as whole_process.py) is run by each binary in
turn, alternating, so machine noise hits them alike. Reports size, median and p90 wall time and
the median of minor page faults per run (from wait4's rusage). Used to check that a change did
not make `kz run` start slower (e.g. the team server moving into its own executable). Usage:

    bench/startup_side_by_side.py [--runs N] KZ [KZ ...]

The first binary writes the local store; every binary must read the store format it wrote.

Each binary is first copied into the temporary directory, all in the same way: how an
executable's pages entered the page cache (written by a copy, or read by readahead) changes how
many pages each fault maps, hence the fault count, peak RSS (by about 1.7 MiB here) and start-up
time, by more than the difference between two builds.
"""
import argparse, os, shutil, statistics, subprocess, tempfile, time


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=600)
    ap.add_argument("kz", nargs="+")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kz-startup-")
    bins = []
    for i, b in enumerate(a.kz):
        os.makedirs(os.path.join(tmp, "bin", str(i)))
        bins.append(shutil.copy2(b, os.path.join(tmp, "bin", str(i), os.path.basename(b))))
    names = dict(zip(bins, a.kz))
    proj = os.path.join(tmp, "proj")
    os.makedirs(proj)
    env = {"PATH": "/usr/bin:/bin", "HOME": os.path.join(tmp, "home"),
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
        subprocess.run([bins[0], "--dir", proj, "put", f"LOCAL_{i}", "--stdin"], input="y" * 40, text=True,
                       env=env, check=True, cwd=proj, capture_output=True)
    for b in bins:
        subprocess.run([b, "--dir", proj, "allow"], env=env, check=True, cwd=proj, capture_output=True)
    null = os.open(os.devnull, os.O_WRONLY)
    actions = [(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]
    times = {b: [] for b in bins}
    faults = {b: [] for b in bins}
    for _ in range(a.runs):
        for b in bins:
            t0 = time.perf_counter_ns()
            pid = os.posix_spawn(b, [b, "--dir", proj, "run", "--", "/bin/true"], env, file_actions=actions)
            _, status, ru = os.wait4(pid, 0)
            times[b].append((time.perf_counter_ns() - t0) / 1e6)
            faults[b].append(ru.ru_minflt)
            if status != 0:
                raise SystemExit(f"{b} exited with {status}")
    print(f"{a.runs} alternating runs each, load average {os.getloadavg()[0]:.2f}")
    print("| binary | size | median | p90 | minor faults (median) |")
    print("|---|---|---|---|---|")
    for b in bins:
        print(f"| {names[b]} | {os.path.getsize(b) / 1e6:.1f} MB | {statistics.median(times[b]):.3f} ms | "
              f"{pct(times[b], 90):.3f} ms | {statistics.median(faults[b]):.0f} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
