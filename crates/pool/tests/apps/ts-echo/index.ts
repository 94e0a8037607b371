// Test fixture: TypeScript, which only Bun runs directly.
const greet = (who: string): string => `hello ${who} from ${typeof Bun !== "undefined" ? "bun" : "node"}`;

export default {
  fetch(req: Request): Response {
    return new Response(greet(new URL(req.url).pathname.slice(1) || "ts"));
  },
  websocket: {
    message(ws: { send(m: string | Uint8Array): void }, message: string | Uint8Array) {
      ws.send(message);
    },
  },
};
