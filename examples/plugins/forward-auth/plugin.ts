// A forward-auth plugin for marina: `GET /check` decides about a request marina describes in
// X-Forwarded-Method / X-Forwarded-Uri (no body), from a bearer token or the `fa_token` cookie.
// Its own pages (`/login`) live at the plugin's base, which its hook never gates.
const users = new Map<string, string>(
  (process.env.FORWARD_AUTH_USERS ?? "")
    .split(",")
    .map((pair) => pair.trim().split(":"))
    .filter((p) => p.length === 2 && p[0] && p[1])
    .map(([token, user]) => [token, user] as [string, string]),
);
const publicPrefixes = (process.env.FORWARD_AUTH_PUBLIC ?? "")
  .split(",")
  .map((p) => p.trim())
  .filter(Boolean);

function tokenOf(req: Request): string | null {
  const auth = req.headers.get("authorization") ?? "";
  if (auth.toLowerCase().startsWith("bearer ")) return auth.slice(7).trim();
  for (const part of (req.headers.get("cookie") ?? "").split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === "fa_token") return decodeURIComponent(rest.join("="));
  }
  return null;
}

const escape = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export default {
  async fetch(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const base = req.headers.get("x-base") ?? "";
    if (url.pathname === "/check") {
      const uri = req.headers.get("x-forwarded-uri") ?? "/";
      const path = uri.split("?")[0];
      if (publicPrefixes.some((p) => path === p || path.startsWith(p.endsWith("/") ? p : `${p}/`))) {
        return new Response(null, { status: 204 });
      }
      const token = tokenOf(req);
      const user = token ? users.get(token) : undefined;
      if (user) return new Response(null, { status: 204, headers: { "x-user": user } });
      const wantsPage = (req.headers.get("accept") ?? "").includes("text/html");
      if (wantsPage && (req.headers.get("x-forwarded-method") ?? "GET") === "GET") {
        const login = `${base}/login?redirect=${encodeURIComponent(uri)}`;
        return new Response(null, { status: 302, headers: { location: login } });
      }
      return Response.json(
        { error: token ? "unknown token" : "a bearer token or the fa_token cookie is required" },
        { status: 401, headers: { "www-authenticate": 'Bearer realm="marina"' } },
      );
    }
    if (url.pathname === "/login" && req.method === "POST") {
      const form = await req.formData();
      const token = String(form.get("token") ?? "");
      const redirect = String(form.get("redirect") ?? "/");
      if (!users.has(token)) return new Response("unknown token\n", { status: 403 });
      const to = redirect.startsWith("/") && !redirect.startsWith("//") ? redirect : "/";
      return new Response(null, {
        status: 303,
        headers: { location: to, "set-cookie": `fa_token=${encodeURIComponent(token)}; Path=/; HttpOnly; SameSite=Lax` },
      });
    }
    if (url.pathname === "/login" || url.pathname === "/") {
      const redirect = url.searchParams.get("redirect") ?? "/";
      const page = `<!doctype html><title>Sign in</title>
<form method="post" action="${escape(base)}/login">
<input type="hidden" name="redirect" value="${escape(redirect)}">
<label>Token <input name="token" type="password" autofocus></label> <button>Sign in</button>
</form>\n`;
      return new Response(page, { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    return new Response("not found\n", { status: 404 });
  },
};
