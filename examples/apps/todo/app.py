"""A todo list in the app's own SQLite database (APP_DATABASE_PATH), shaped by migrations/.

GET /        the todos as JSON
POST /       {"title": "..."} adds one
GET /health  200 once the server listens
"""
import json
import os
import sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DB = os.environ.get("APP_DATABASE_PATH")


def connect():
    if not DB:
        raise RuntimeError("APP_DATABASE_PATH is not set: marina runs on PostgreSQL, or this is not marina")
    return sqlite3.connect(DB, timeout=5)


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"ok": True})
        try:
            with connect() as db:
                rows = db.execute("SELECT id, title, done FROM todos ORDER BY id").fetchall()
        except (sqlite3.Error, RuntimeError) as e:
            return self.reply(503, {"error": str(e)})
        self.reply(200, [{"id": i, "title": t, "done": bool(d)} for i, t, d in rows])

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            title = json.loads(self.rfile.read(length) or b"{}").get("title")
        except (ValueError, AttributeError):
            title = None
        if not isinstance(title, str) or not title.strip():
            return self.reply(400, {"error": 'expected {"title": "..."}'})
        with connect() as db:
            cur = db.execute("INSERT INTO todos (title) VALUES (?)", (title.strip(),))
        self.reply(201, {"id": cur.lastrowid, "title": title.strip(), "done": False})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
