"""Blind-mode test client: Python websockets (>= 15 reads the proxy from HTTPS_PROXY; CA from
SSL_CERT_FILE through the default SSL context). Prints `==kz== WS <status>`, then the server's
first frame and the echo of `hello $API_TOKEN`."""

import asyncio
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
from kzclient import Run, one_line

run = Run()
url = run.base.replace("https://", "wss://", 1) + "/ws"


async def main():
    try:
        async with connect(url, additional_headers=run.headers(), open_timeout=30) as ws:
            first = await asyncio.wait_for(ws.recv(), 30)
            await ws.send(f"hello {run.token}")
            echo = await asyncio.wait_for(ws.recv(), 30)
            print("==kz== WS 101")
            print(first)
            print(echo, flush=True)
    except InvalidStatus as e:
        print(f"==kz== WS {e.response.status_code}")
        print(e.response.body.decode("utf-8", "replace"), flush=True)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        print(f"==kz== WS ERROR {one_line(e)}", flush=True)
        run.failed = True


asyncio.run(main())
run.end()
