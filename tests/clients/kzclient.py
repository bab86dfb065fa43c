"""Shared output format of the Python blind-mode test clients (see README.md)."""

import os
import sys


def one_line(e):
    return " ".join(f"{type(e).__name__}: {e}".split())


class Run:
    def __init__(self):
        if len(sys.argv) != 2:
            print(f"usage: {sys.argv[0]} BASE_URL", file=sys.stderr)
            sys.exit(2)
        self.base = sys.argv[1].rstrip("/")
        self.token = os.environ["API_TOKEN"]
        self.failed = False
        print(f"==kz== TOKEN {self.token}", flush=True)

    def headers(self):
        return {"Authorization": f"Bearer {self.token}"}

    def body(self):
        return {"token": self.token}

    def request(self, kind, fn):
        """fn() returns (status, text) or raises."""
        try:
            status, text = fn()
            print(f"==kz== {kind} {status}")
            print(text, flush=True)
        except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
            print(f"==kz== {kind} ERROR {one_line(e)}", flush=True)
            self.failed = True

    def end(self):
        print("==kz== END", flush=True)
        sys.exit(3 if self.failed else 0)
