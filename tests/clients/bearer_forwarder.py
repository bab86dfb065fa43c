"""A loopback forwarder that adds `Authorization: Bearer <token>` to every request.

Usage: python bearer_forwarder.py LISTEN_PORT TARGET_HOST:PORT TOKEN_FILE

For MCP test tools that cannot send a header (the official conformance suite): they talk to
this forwarder, which passes each request to the keyzero MCP endpoint with the token added
and `Host` set to the target (so keyzero's DNS-rebinding guard sees its own name). Answers are
relayed as they are. A test stand-in: it never leaves loopback.
"""

import http.client
import http.server
import sys

PORT, TARGET, TOKEN_FILE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
       "proxy-authorization", "authorization", "content-length"}


class Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def relay(self):
        with open(TOKEN_FILE, encoding="utf-8") as f:
            token = f.read().strip()
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Host"] = TARGET
        headers["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection(TARGET, timeout=60)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_DELETE = relay

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Forward).serve_forever()
