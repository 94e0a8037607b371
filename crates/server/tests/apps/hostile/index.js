// A hostile app: every route tries to reach something that is not its own and reports what
// happened ({ ok, error }) instead of failing, so the test can assert on each attempt.
import { readFileSync, writeFileSync, readdirSync } from "node:fs";
import { createConnection } from "node:net";
import { spawn } from "node:child_process";

const attempt = (fn) => {
  try {
    return { ok: true, value: fn() };
  } catch (e) {
    return { ok: false, error: e.code || String(e) };
  }
};

// Sends a forged lifecycle call (and any headers) to a Unix socket and returns what happened.
const forge = (path) =>
  new Promise((resolve) => {
    const sock = createConnection({ path });
    let data = "";
    sock.on("connect", () =>
      sock.write("POST /__marina/lifecycle HTTP/1.1\r\nhost: x\r\nx-marina-control: guessed\r\nx-marina-event: terminate\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
    );
    sock.on("data", (d) => (data += d));
    sock.on("error", (e) => resolve({ ok: false, error: e.code || String(e) }));
    sock.on("close", () => resolve({ ok: true, value: data.split("\r\n")[0] }));
  });

const hold = [];

export default {
  async fetch(req) {
    const url = new URL(req.url);
    const q = url.searchParams;
    switch (url.pathname) {
      case "/whoami":
        return Response.json({
          uid: process.getuid(),
          gid: process.getgid(),
          pid: process.pid,
          argv: process.argv,
          env: Object.keys(process.env),
          tmpdir: process.env.TMPDIR,
          data: process.env.APP_DATA_DIR,
        });
      case "/api": {
        // Calls marina's internal API as an operator's browser would (the CSRF header set).
        const init = { method: q.get("method") || "GET", headers: { "x-buntime-internal": "true" } };
        if (q.has("body")) {
          init.body = q.get("body");
          init.headers["content-type"] = "application/json";
        }
        try {
          const r = await fetch(process.env.RUNTIME_API_URL + q.get("path"), init);
          return Response.json({ ok: true, status: r.status, body: await r.text() });
        } catch (e) {
          return Response.json({ ok: false, error: String(e) });
        }
      }
      case "/read":
        return Response.json(attempt(() => readFileSync(q.get("path"), "utf8").length));
      case "/list":
        return Response.json(attempt(() => readdirSync(q.get("path")).length));
      case "/write":
        return Response.json(attempt(() => writeFileSync(q.get("path"), "x")));
      case "/signal":
        return Response.json(attempt(() => process.kill(Number(q.get("pid")), 0)));
      case "/forge":
        return Response.json(await forge(q.get("path")));
      case "/bomb": {
        // Grows until something stops it.
        for (;;) {
          const b = Buffer.alloc(8 * 1024 * 1024, 1);
          hold.push(b);
          await new Promise((r) => setTimeout(r, 5));
        }
      }
      case "/forks": {
        const n = Number(q.get("n") || 500);
        let started = 0;
        let failed = 0;
        for (let i = 0; i < n; i++) {
          try {
            const c = spawn("sleep", ["30"], { stdio: "ignore" });
            c.on("error", () => {});
            if (c.pid) started++;
            else failed++;
          } catch {
            failed++;
          }
        }
        return Response.json({ started, failed });
      }
      case "/flood": {
        // 200 MB of output without a newline, with invalid UTF-8, then one normal line.
        const chunk = Buffer.alloc(1024 * 1024, 0x61);
        chunk[100] = 0xff;
        chunk[101] = 0xfe;
        const mb = Number(q.get("mb") || 200);
        for (let i = 0; i < mb; i++) {
          if (!process.stdout.write(chunk)) await new Promise((r) => process.stdout.once("drain", r));
        }
        process.stdout.write("\nflood done\n");
        return new Response("flooded");
      }
      default:
        return new Response("hostile");
    }
  },
};
