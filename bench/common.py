"""Shared by the benchmark scripts: arguments, the release build, and writing a result block
between markers in docs/benchmarks.md."""
import argparse, os, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup(description, default_runs):
    """Parses --runs/--kz/--write; builds the release `kz` unless --kz is given. Returns (args, kz)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--runs", type=int, default=default_runs)
    ap.add_argument("--kz", default=None, help="a kz binary to measure (default: build the release one)")
    ap.add_argument("--write", default=None, help="a Markdown file to update, e.g. docs/benchmarks.md")
    a = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/keyzero-target"))
    if a.kz:
        return a, a.kz
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "kz-cli"], cwd=ROOT, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=target))
    return a, os.path.join(target, "release", "kz")


def write_block(relpath, name, meta, table):
    """Replaces (or appends) the block between `<!-- NAME:begin -->` and `<!-- NAME:end -->`."""
    path = os.path.join(ROOT, relpath)
    doc = open(path).read() if os.path.exists(path) else ""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{meta}\n\n{table}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc += "\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)
