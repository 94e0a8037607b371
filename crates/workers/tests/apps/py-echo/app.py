"""Test fixture: a process app (stdlib only) listening on $PORT, with a WebSocket echo."""
import base64
import hashlib
import json
import os
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("py-echo: " + (fmt % args) + "\n")

    def _send(self, status, body, ctype="text/plain", extra=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, "ok")
        if self.path == "/env":
            return self._send(200, json.dumps(dict(os.environ)), "application/json")
        if self.path == "/pid":
            return self._send(200, str(os.getpid()))
        if self.path.startswith("/slow"):
            ms = int(self.path.partition("ms=")[2] or "300")
            time.sleep(ms / 1000)
            return self._send(200, "slow done")
        if self.path == "/cookies":
            return self._send(200, "two cookies", extra=[("set-cookie", "a=1"), ("set-cookie", "b=2")])
        if self.path == "/ws" and self.headers.get("upgrade", "").lower() == "websocket":
            return self._websocket()
        return self._send(200, "python says " + self.path + " base=" + str(self.headers.get("x-base")))

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(n)
        return self._send(200, "got %d bytes" % len(body))

    def _websocket(self):
        key = self.headers["sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode = head[0] & 0x0F
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.wfile.write(b"\x88\x00")
                self.wfile.flush()
                return
            out = bytes([0x80 | opcode])
            if len(payload) < 126:
                out += bytes([len(payload)])
            else:
                out += bytes([126]) + struct.pack(">H", len(payload))
            self.wfile.write(out + payload)
            self.wfile.flush()


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print("py-echo listening on", port, flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
