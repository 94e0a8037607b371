// Notes: an app using both of marina's data services with its own worker token, and no
// dependencies. The notes live in the app's SQL database (Hrana over HTTP at LIBSQL_URL — the
// same requests @libsql/client sends); a counter of created notes lives in keyval.
//
//   curl -X POST localhost:8000/notes -d '{"text":"hello"}'
//   curl localhost:8000/notes

const token = process.env.LIBSQL_AUTH_TOKEN;
const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
const keyval = `${process.env.RUNTIME_API_URL}/keyval/api`;

async function sql(stmt, args = []) {
  const toValue = (v) => (typeof v === "number" && Number.isInteger(v) ? { type: "integer", value: String(v) } : { type: "text", value: String(v) });
  const resp = await fetch(new URL("v2/pipeline", process.env.LIBSQL_URL), {
    method: "POST",
    headers,
    body: JSON.stringify({ requests: [{ type: "execute", stmt: { sql: stmt, args: args.map(toValue) } }, { type: "close" }] }),
  });
  const result = (await resp.json()).results[0];
  if (result.type === "error") throw new Error(result.error.message);
  const { cols, rows } = result.response.result;
  return rows.map((row) => Object.fromEntries(row.map((v, i) => [cols[i].name, v.type === "integer" ? Number(v.value) : v.value])));
}

let ready;

export default {
  async fetch(req) {
    ready ??= sql("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)");
    await ready;
    if (req.method === "POST") {
      const { text } = await req.json();
      if (typeof text !== "string" || text === "") return Response.json({ error: "text is required" }, { status: 400 });
      await sql("INSERT INTO notes (text) VALUES (?)", [text]);
      await fetch(`${keyval}/atomic`, {
        method: "POST",
        headers,
        body: JSON.stringify({ mutations: [{ type: "sum", key: ["stats", "created"], value: 1 }] }),
      });
      return Response.json({ ok: true }, { status: 201 });
    }
    const notes = await sql("SELECT id, text FROM notes ORDER BY id");
    const stats = await fetch(`${keyval}/keys/stats/created`, { headers });
    const created = stats.ok ? (await stats.json()).value : 0;
    return Response.json({ notes, created });
  },
};
