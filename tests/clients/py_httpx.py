"""Blind-mode test client: Python httpx (CA from SSL_CERT_FILE, proxy from HTTPS_PROXY)."""

import sys

import httpx

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
from kzclient import Run

run = Run()


def get():
    r = httpx.get(f"{run.base}/get?kz=1", headers=run.headers(), timeout=30)
    return r.status_code, r.text


def post():
    r = httpx.post(f"{run.base}/post", headers=run.headers(), json=run.body(), timeout=30)
    return r.status_code, r.text


run.request("GET", get)
run.request("POST", post)
run.end()
