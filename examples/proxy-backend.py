"""A stand-in remote API for the proxy-demo app: plain HTTP on 127.0.0.1:$PORT (default 4000).

It is not an app (marina does not start it): proxy rules forward to servers that live
elsewhere. It answers every GET with what it received, so the rewrite and the forwarding
headers can be seen. Python stdlib only.
"""
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({
            "backend": "proxy-backend.py",
            "path": self.path,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "forwardedFor": self.headers.get("x-forwarded-for"),
            "forwarded": self.headers.get("forwarded"),
            "proxiedBy": self.headers.get("x-proxied-by"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "4000"))
    print(f"proxy-backend listening on http://127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
