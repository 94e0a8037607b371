// Test fixture: an external plugin's worker. `GET /check` is its onRequest hook; what it
// answers depends on the path marina describes in X-Forwarded-Uri. `/seen` lists the hook
// requests it received (method, URL, headers, body size), for the tests to inspect.
const seen = [];

export default {
  async fetch(req) {
    const url = new URL(req.url);
    if (url.pathname === "/seen") return Response.json(seen);
    if (url.pathname !== "/check") {
      return new Response(`gate page ${url.pathname}${url.search} base=${req.headers.get("x-base")}`);
    }
    const body = await req.arrayBuffer();
    seen.push({
      method: req.method,
      url: url.pathname + url.search,
      headers: Object.fromEntries(req.headers),
      bodyBytes: body.byteLength,
    });
    const uri = req.headers.get("x-forwarded-uri") ?? "";
    const path = uri.split("?")[0];
    const has = (s) => path.includes(s);
    if (has("/deny401")) {
      return Response.json(
        { error: "who are you" },
        { status: 401, headers: { "www-authenticate": 'Bearer realm="gate"', "x-gate": "denied" } },
      );
    }
    if (has("/deny403")) return new Response("forbidden here\n", { status: 403 });
    if (has("/login-needed")) {
      return new Response(null, { status: 302, headers: { location: `/gate/login?next=${encodeURIComponent(uri)}` } });
    }
    if (has("/slow")) {
      await new Promise((r) => setTimeout(r, 4000));
      return new Response(null, { status: 204, headers: { "x-user": "late" } });
    }
    if (has("/crash")) {
      setTimeout(() => process.exit(3), 5);
      return new Promise(() => {});
    }
    if (has("/throw")) throw new Error("the gate broke");
    if (has("/nouser")) return new Response(null, { status: 204, headers: { "x-other": "leak" } });
    if (has("/identity")) {
      return new Response(null, {
        status: 200,
        headers: { "x-identity": JSON.stringify({ id: "u-7", name: "Ann", roles: ["reader"] }) },
      });
    }
    if (has("/bad-identity")) return new Response(null, { status: 200, headers: { "x-identity": "nope" } });
    return new Response("allowed", {
      status: 200,
      headers: { "x-user": "alice", "x-other": "leak", "content-type": "text/plain" },
    });
  },
};
