// Test fixture: TypeScript, which only Bun runs directly; also a Bun WebSocket echo.
const greet = (who: string): string => `hello ${who} from ${typeof Bun !== "undefined" ? "bun" : "node"}`;

type Server = { upgrade(req: Request): boolean };

export default {
  fetch(req: Request, server?: Server): Response | undefined {
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket" && server) {
      return server.upgrade(req) ? undefined : new Response("upgrade failed", { status: 400 });
    }
    return new Response(greet(new URL(req.url).pathname.slice(1) || "ts"));
  },
  websocket: {
    message(ws: { send(m: string | Uint8Array): void }, message: string | Uint8Array) {
      ws.send(message);
    },
  },
};
