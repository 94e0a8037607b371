// Bench fixture: a minimal HTTP server on $PORT (Bun.serve when under Bun, node:http otherwise).
const port = Number(process.env.PORT);
if (typeof Bun !== "undefined") {
  Bun.serve({ port, hostname: "127.0.0.1", fetch: () => new Response("ok") });
} else {
  const http = await import("node:http");
  http.createServer((_, res) => res.end("ok")).listen(port, "127.0.0.1");
}
