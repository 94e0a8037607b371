// A test app using both data services with its own worker token: keyval over fetch, and its
// SQL database through the unmodified @libsql/client from npm (LIBSQL_URL, LIBSQL_AUTH_TOKEN).
import { createClient } from "@libsql/client";

const kv = `${process.env.RUNTIME_API_URL}/keyval/api`;
const auth = { authorization: `Bearer ${process.env.LIBSQL_AUTH_TOKEN}` };
const db = createClient({ url: process.env.LIBSQL_URL, authToken: process.env.LIBSQL_AUTH_TOKEN, intMode: "bigint" });

async function kvCall(method, path, body) {
  const r = await fetch(`${kv}${path}`, {
    method,
    headers: { ...auth, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

async function selftest() {
  const out = {};
  out.put = await kvCall("PUT", "/keys/prefs/theme", { dark: true });
  out.get = await kvCall("GET", "/keys/prefs/theme");
  out.sum = await kvCall("POST", "/atomic", { mutations: [{ type: "sum", key: ["hits"], value: 2 }] });

  await db.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, n INTEGER)");
  const ins = await db.execute({ sql: "INSERT INTO items (name, n) VALUES (?, ?)", args: ["a", 9007199254740993n] });
  out.insertRowid = String(ins.lastInsertRowid);
  const named = await db.execute({ sql: "SELECT name FROM items WHERE name = :name", args: { name: "a" } });
  out.named = named.rows[0].name;
  // A write transaction across several HTTP requests (baton), then a rolled-back one.
  const tx = await db.transaction("write");
  await tx.execute({ sql: "INSERT INTO items (name, n) VALUES (?, ?)", args: ["t1", 1] });
  await tx.commit();
  const tx2 = await db.transaction("write");
  await tx2.execute({ sql: "INSERT INTO items (name, n) VALUES (?, ?)", args: ["t2", 2] });
  await tx2.rollback();
  // A batch is atomic: the duplicate fails it and nothing of it stays.
  try {
    await db.batch([
      { sql: "INSERT INTO items (name, n) VALUES (?, ?)", args: ["b1", 3] },
      { sql: "INSERT INTO items (name, n) VALUES (?, ?)", args: ["a", 4] },
    ], "write");
    out.batchError = null;
  } catch (e) {
    out.batchError = e.code ?? String(e);
  }
  await db.batch([
    { sql: "INSERT INTO items (name, n) VALUES (?, ?)", args: ["b2", 5] },
    { sql: "UPDATE items SET n = n + 1 WHERE name = ?", args: ["b2"] },
  ], "write");
  try {
    await db.execute("SELEC broken");
    out.sqlError = null;
  } catch (e) {
    out.sqlError = e.code ?? String(e);
  }
  const rows = await db.execute("SELECT name, n FROM items ORDER BY name");
  out.rows = rows.rows.map((r) => [r.name, String(r.n)]);
  // marina's own tables are not reachable: this database is the app's file alone.
  try {
    await db.execute("SELECT * FROM kv_entries");
    out.marinaTables = "reachable";
  } catch (e) {
    out.marinaTables = e.code ?? String(e);
  }
  return out;
}

async function code(fn) {
  try {
    await fn();
    return "allowed";
  } catch (e) {
    return `${e.code ?? "?"}: ${e.message}`;
  }
}

// The same through marina on PostgreSQL, where the app's SQL runs as its own login role.
// `other` is another app's schema ident, which this app must not reach.
async function pgtest(other) {
  const out = {};
  await db.execute("CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY, body TEXT UNIQUE NOT NULL)");
  const ins = await db.execute({ sql: "INSERT INTO notes (body) VALUES (?) RETURNING id", args: ["first"] });
  out.insertedId = String(ins.rows[0].id);
  const tx = await db.transaction("write");
  await tx.execute({ sql: "INSERT INTO notes (body) VALUES (?)", args: ["in tx"] });
  await tx.commit();
  const tx2 = await db.transaction("write");
  await tx2.execute({ sql: "INSERT INTO notes (body) VALUES (?)", args: ["rolled back"] });
  await tx2.rollback();
  out.batchError = await code(() =>
    db.batch([
      { sql: "INSERT INTO notes (body) VALUES (?)", args: ["b1"] },
      { sql: "INSERT INTO notes (body) VALUES (?)", args: ["first"] },
    ], "write"));
  out.rows = (await db.execute("SELECT body FROM notes ORDER BY id")).rows.map((r) => r.body);
  out.whoami = (await db.execute("SELECT current_user::text AS u")).rows[0].u;
  out.marinaTables = await code(() => db.execute("SELECT * FROM marina.marina_api_keys"));
  out.marinaKv = await code(() => db.execute("SELECT * FROM marina.kv_entries"));
  out.otherApp = await code(() => db.execute(`SELECT * FROM app_${other}.notes`));
  out.otherInsert = await code(() => db.execute(`CREATE TABLE app_${other}.planted (x INT)`));
  out.setRole = await code(() => db.execute("SET ROLE marina"));
  out.resetRole = await code(async () => {
    await db.execute("RESET ROLE");
    await db.execute("SELECT * FROM marina.marina_api_keys");
  });
  out.newSchema = await code(() => db.execute("CREATE SCHEMA planted"));
  out.newRole = await code(() => db.execute("CREATE ROLE planted"));
  return out;
}

export default {
  async fetch(req) {
    const url = new URL(req.url);
    if (url.pathname === "/selftest") return Response.json(await selftest());
    if (url.pathname === "/pgtest") return Response.json(await pgtest(url.searchParams.get("other")));
    // For the isolation test only: a real app never shows its token.
    if (url.pathname === "/token") return new Response(process.env.LIBSQL_AUTH_TOKEN);
    return new Response("not found", { status: 404 });
  },
};
