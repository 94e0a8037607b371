// marina's JS host shim. Shipped inside the marina binary and written to {state_dir}/shim/.
// Usage: bun|node host.mjs <socket-path> [<ready-fd>], with the control token as the first line
// of stdin (never in argv or the environment, where other processes could read it). Once it
// listens it writes `ready` and the lifecycle hooks the app has (`ready idle terminate`) as one
// line to <ready-fd>, a pipe marina waits on.
// Imports $ENTRYPOINT, whose default export is { fetch } or { routes, fetch? } with optional
// onIdle / onTerminate (Buntime's contract), and serves it over HTTP/1.1 on a Unix socket.
// marina sends lifecycle events as POST /__marina/lifecycle with the control token, which only
// marina knows (it is not in the app's environment).
const isBun = typeof globalThis.Bun !== "undefined";
// Under Bun the shim uses Bun's own APIs, never node:fs or node:url: a fresh Bun spends ~3 ms
// of CPU loading those two modules, a third of a `ttl: 0` worker's whole life (BENCHMARKS.md,
// "ttl: 0 CPU per request"). Node has them loaded already, so it keeps them.
const fs = isBun ? null : await import("node:fs");
const [, , socketPath, readyArg] = process.argv;
const readyFd = readyArg === undefined ? -1 : Number(readyArg);
let token = "";
try {
  token = (isBun ? await Bun.stdin.text() : fs.readFileSync(0, "utf8")).split("\n")[0].trim();
} catch {
  /* no stdin: no lifecycle call can be authenticated */
}
const entrypoint = process.env.ENTRYPOINT;

// Tells marina the worker listens (and which hooks it has), once. Node closes the pipe after
// the line; Bun cannot close an fd without node:fs, so its write end stays open, unread:
// marina stops reading at the newline and drops its end.
function signalReady() {
  if (!(readyFd >= 0)) return;
  let line = "ready";
  if (typeof app.onIdle === "function") line += " idle";
  if (typeof app.onTerminate === "function") line += " terminate";
  line += "\n";
  try {
    if (isBun) {
      const sink = Bun.file(readyFd).writer();
      sink.write(line);
      sink.end();
    } else {
      fs.writeSync(readyFd, line);
      fs.closeSync(readyFd);
    }
  } catch (e) {
    console.error(`marina shim: could not signal readiness on fd ${readyFd}: ${e}`);
  }
}

function fail(message) {
  console.error(`marina shim: ${message}`);
  process.exit(3);
}

if (!socketPath || !token || !entrypoint) fail("usage: host.mjs <socket> with the control token on stdin and ENTRYPOINT set");

let mod;
try {
  const url = isBun ? Bun.pathToFileURL(entrypoint) : (await import("node:url")).pathToFileURL(entrypoint);
  mod = await import(url.href);
} catch (e) {
  fail(`importing ${entrypoint} failed: ${e && e.stack ? e.stack : e}`);
}
const app = mod.default;
if (!app || (typeof app.fetch !== "function" && (typeof app.routes !== "object" || app.routes === null))) {
  fail(`Module must export default with fetch method or routes (${entrypoint})`);
}

// ---- routes: `:param` segments and a `*` wildcard, first match in declaration order ----
function compile(pattern) {
  const segs = pattern.split("/").filter((s) => s !== "");
  return (pathname) => {
    const parts = pathname.split("/").filter((s) => s !== "");
    const params = {};
    for (let i = 0; i < segs.length; i++) {
      const s = segs[i];
      if (s === "*") {
        params["*"] = parts.slice(i).map(decodeURIComponent).join("/");
        return params;
      }
      if (i >= parts.length) return null;
      if (s.startsWith(":")) params[s.slice(1)] = decodeURIComponent(parts[i]);
      else if (s !== parts[i]) return null;
    }
    return parts.length === segs.length ? params : null;
  };
}

function toHandler(value) {
  if (value instanceof Response) return () => value.clone();
  if (typeof Blob !== "undefined" && value instanceof Blob) return () => new Response(value);
  if (typeof value === "function") return value;
  return null;
}

const routes = [];
if (app.routes && typeof app.routes === "object") {
  for (const [pattern, value] of Object.entries(app.routes)) {
    const match = compile(pattern);
    const direct = toHandler(value);
    if (direct) {
      routes.push({ match, any: direct });
    } else if (value && typeof value === "object") {
      const methods = {};
      for (const [m, v] of Object.entries(value)) {
        const h = toHandler(v);
        if (h) methods[m.toUpperCase()] = h;
      }
      routes.push({ match, methods });
    }
  }
}

function setParams(req, params) {
  try {
    Object.defineProperty(req, "params", { value: params, configurable: true, enumerable: true, writable: true });
  } catch {
    /* a frozen Request: leave it */
  }
}

async function dispatch(req, server) {
  if (routes.length > 0) {
    const pathname = new URL(req.url).pathname;
    for (const r of routes) {
      const params = r.match(pathname);
      if (!params) continue;
      let h = r.any;
      if (!h && r.methods) h = r.methods[req.method] || (req.method === "HEAD" ? r.methods.GET : undefined);
      if (!h) continue;
      setParams(req, params);
      return h(req, server);
    }
  }
  if (typeof app.fetch === "function") {
    setParams(req, {});
    return app.fetch(req, server);
  }
  return new Response("Not Found", { status: 404 });
}

function errorResponse(e) {
  console.error(e && e.stack ? e.stack : String(e));
  const message = e && e.message ? e.message : String(e);
  // The marker header hands the error to marina's error edge, which decides what the client
  // sees (in production: the code and request id only, never the thrown text).
  return Response.json(
    { success: false, code: "WORKER_ERROR", message },
    { status: 500, headers: { "x-marina-error": "WORKER_ERROR" } },
  );
}

async function lifecycle(req) {
  const event = req.headers.get("x-marina-event");
  try {
    if (event === "idle" && typeof app.onIdle === "function") await app.onIdle();
    if (event === "terminate" && typeof app.onTerminate === "function") await app.onTerminate();
  } catch (e) {
    console.error(`marina shim: on${event} failed: ${e && e.stack ? e.stack : e}`);
  }
  return new Response(null, { status: 204 });
}

// Buntime's wrapper gives a response without a Content-Type `text/plain;charset=utf-8`, and it
// does so in JavaScript, before the server sees the response. It has to happen here too: Bun.serve
// itself fills in `application/octet-stream` for byte bodies, so marina would never see the gap.
function withDefaultType(res) {
  const s = res.status;
  if (s < 200 || s === 204 || s === 304 || res.headers.has("content-type")) return res;
  try {
    res.headers.set("content-type", "text/plain;charset=utf-8");
    return res;
  } catch {
    // Immutable headers (a Response from fetch() or Response.redirect): copy into a new one.
    const headers = new Headers(res.headers);
    headers.set("content-type", "text/plain;charset=utf-8");
    return new Response(res.body, { status: s, statusText: res.statusText, headers });
  }
}

async function handle(req, server) {
  if (req.headers.get("x-marina-control") === token && new URL(req.url).pathname === "/__marina/lifecycle") {
    return lifecycle(req);
  }
  try {
    const res = await dispatch(req, server);
    if (res === undefined && server) return undefined; // Bun: upgraded to a WebSocket
    if (!(res instanceof Response)) throw new Error(`fetch returned ${typeof res}, expected a Response`);
    return withDefaultType(res);
  } catch (e) {
    return errorResponse(e);
  }
}

if (isBun) {
  const options = {
    unix: socketPath,
    fetch: handle,
    idleTimeout: 0, // SSE and long polls must not be cut; marina enforces the request timeout
    maxRequestBodySize: Number.MAX_SAFE_INTEGER, // marina enforces maxBodySize while streaming
    error: errorResponse,
  };
  if (app.websocket) options.websocket = app.websocket;
  Bun.serve(options);
  signalReady();
} else {
  const http = await import("node:http");
  const { Readable } = await import("node:stream");

  const serve = async (nreq, nres) => {
    const headers = new Headers();
    const raw = nreq.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      try {
        headers.append(raw[i], raw[i + 1]);
      } catch {
        /* a header undici refuses: skip */
      }
    }
    const host = nreq.headers.host || "localhost";
    const hasBody = nreq.method !== "GET" && nreq.method !== "HEAD";
    const controller = new AbortController();
    nres.on("close", () => {
      if (!nres.writableFinished) controller.abort();
    });
    let req;
    try {
      req = new Request(`http://${host}${nreq.url}`, {
        method: nreq.method,
        headers,
        body: hasBody ? Readable.toWeb(nreq) : undefined,
        duplex: hasBody ? "half" : undefined,
        signal: controller.signal,
      });
    } catch (e) {
      nres.writeHead(400, { "content-type": "text/plain" });
      nres.end(String(e));
      return;
    }
    const res = await handle(req, undefined);
    const out = {};
    for (const [k, v] of res.headers) if (k !== "set-cookie") out[k] = v;
    const cookies = res.headers.getSetCookie();
    if (cookies.length) out["set-cookie"] = cookies;
    nres.writeHead(res.status, res.statusText || undefined, out);
    if (!res.body || nreq.method === "HEAD") {
      nres.end();
      return;
    }
    nres.flushHeaders();
    const reader = res.body.getReader();
    controller.signal.addEventListener("abort", () => reader.cancel().catch(() => {}));
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (!nres.write(value)) {
          await new Promise((resolve) => {
            nres.once("drain", resolve);
            nres.once("close", resolve);
          });
          if (nres.destroyed) break;
        }
      }
      nres.end();
    } catch (e) {
      nres.destroy(e);
    }
  };
  const server = http.createServer((nreq, nres) => {
    // Whatever goes wrong while writing one response (a header Node refuses, a broken stream)
    // fails that response only, never the worker.
    serve(nreq, nres).catch((e) => {
      console.error(`marina shim: ${e && e.stack ? e.stack : e}`);
      if (!nres.headersSent) {
        nres.writeHead(500, { "content-type": "application/json", "x-marina-error": "WORKER_ERROR" });
        nres.end(JSON.stringify({ success: false, code: "WORKER_ERROR", message: String(e && e.message ? e.message : e) }));
      } else {
        nres.destroy();
      }
    });
  });
  // marina owns timeouts; idle keep-alive connections stay open for reuse.
  server.keepAliveTimeout = 0;
  server.requestTimeout = 0;
  server.headersTimeout = 0;
  server.listen(socketPath, signalReady);
}

const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
