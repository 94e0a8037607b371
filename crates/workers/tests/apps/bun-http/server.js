// Bench fixture: a minimal HTTP server on $PORT (Bun.serve when under Bun, node:http otherwise).
// WORK_US makes each request spin the CPU for that many microseconds, like a real handler would.
const port = Number(process.env.PORT);
const workUs = Number(process.env.WORK_US || 0);
const work = () => {
  if (workUs > 0) {
    const end = performance.now() + workUs / 1000;
    while (performance.now() < end);
  }
  return "ok";
};
if (typeof Bun !== "undefined") {
  Bun.serve({ port, hostname: "127.0.0.1", fetch: () => new Response(work()) });
} else {
  const http = await import("node:http");
  http.createServer((_, res) => res.end(work())).listen(port, "127.0.0.1");
}
