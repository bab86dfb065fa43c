"""Blind-mode test client: Python urllib (proxy from HTTPS_PROXY; CA: an SSL context made
from SSL_CERT_FILE, as urllib has no CA variable of its own)."""

import json
import os
import ssl
import sys
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
from kzclient import Run

run = Run()
context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])


def send(req):
    try:
        with urllib.request.urlopen(req, context=context, timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def get():
    return send(urllib.request.Request(f"{run.base}/get?kz=1", headers=run.headers()))


def post():
    headers = {**run.headers(), "Content-Type": "application/json"}
    data = json.dumps(run.body()).encode()
    return send(urllib.request.Request(f"{run.base}/post", data=data, headers=headers, method="POST"))


run.request("GET", get)
run.request("POST", post)
run.end()
