"""Blind-mode test client: Python requests (CA from REQUESTS_CA_BUNDLE, proxy from HTTPS_PROXY)."""

import sys

import requests

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
from kzclient import Run

run = Run()


def get():
    r = requests.get(f"{run.base}/get?kz=1", headers=run.headers(), timeout=30)
    return r.status_code, r.text


def post():
    r = requests.post(f"{run.base}/post", headers=run.headers(), json=run.body(), timeout=30)
    return r.status_code, r.text


run.request("GET", get)
run.request("POST", post)
run.end()
