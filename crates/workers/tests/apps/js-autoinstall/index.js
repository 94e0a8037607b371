// Test fixture: needs `bun install` (autoInstall) before it can import its dependency.
import { greet } from "greet";

export default { fetch: () => new Response(greet("marina")) };
