// Test fixture: a Buntime-style app exercising the worker contract.
import { appendFileSync } from "node:fs";

let idleCalls = 0;
const marker = (what) => {
  if (process.env.MARKER_FILE) appendFileSync(process.env.MARKER_FILE, `${what} ${process.pid}\n`);
};
const hoard = [];

export default {
  async fetch(req) {
    const url = new URL(req.url);
    switch (url.pathname) {
      case "/env":
        return Response.json(process.env);
      case "/pid":
        return new Response(String(process.pid));
      case "/bytes":
        // No Content-Type: marina adds Buntime's default.
        return new Response(new TextEncoder().encode("raw bytes"));
      case "/echo":
        return Response.json({
          method: req.method,
          path: url.pathname + url.search,
          base: req.headers.get("x-base"),
          requestId: req.headers.get("x-request-id"),
          forwardedFor: req.headers.get("x-forwarded-for"),
          identity: req.headers.get("x-identity"),
          seenBy: req.headers.get("x-seen-by"),
          body: req.body ? await req.text() : "",
        });
      case "/cookies": {
        const h = new Headers();
        h.append("set-cookie", "a=1; Path=/");
        h.append("set-cookie", "b=2; Path=/");
        h.set("content-type", "text/plain");
        return new Response("two cookies", { headers: h });
      }
      case "/count": {
        let n = 0;
        const reader = req.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          n += value.length;
        }
        return Response.json({ bytes: n });
      }
      case "/sse": {
        let i = 0;
        let timer;
        const stream = new ReadableStream({
          start(c) {
            timer = setInterval(() => c.enqueue(new TextEncoder().encode(`data: tick ${i++}\n\n`)), 50);
          },
          cancel() {
            clearInterval(timer);
          },
        });
        return new Response(stream, { headers: { "content-type": "text/event-stream" } });
      }
      case "/slow":
        await new Promise((r) => setTimeout(r, Number(url.searchParams.get("ms") || 300)));
        return new Response("slow done");
      case "/hang":
        for (;;) {}
      case "/crash":
        setTimeout(() => process.exit(7), 10);
        return new Promise(() => {});
      case "/throw":
        throw new Error("boom from the app");
      case "/idle-calls":
        return new Response(String(idleCalls));
      case "/grow": {
        for (let i = 0; i < 40; i++) hoard.push(Buffer.alloc(4 * 1024 * 1024, 1));
        return new Response(`holding ${hoard.length * 4} MiB`);
      }
      default:
        return new Response(`hello from ${url.pathname}`);
    }
  },
  onIdle() {
    idleCalls++;
    marker("idle");
  },
  onTerminate() {
    marker("terminate");
  },
};
