// A Buntime-style app: one `fetch` handler. Runs unchanged under Buntime and marina.
// marina strips the app prefix, so `/hello-js/greet?name=Ada` arrives here as `/greet?name=Ada`.
let served = 0;

export default {
  fetch(req: Request): Response {
    const url = new URL(req.url);
    served++;
    if (url.pathname === "/greet") {
      return Response.json({ hello: url.searchParams.get("name") ?? "world", served });
    }
    return new Response(`hello from ${process.env.APP_NAME ?? "hello-js"} (mounted at ${req.headers.get("x-base")})\n`);
  },
  onIdle() {
    console.log(`idle after ${served} requests`);
  },
  onTerminate() {
    console.log("stopping");
  },
};

// curl http://localhost:8000/hello-js/
// curl 'http://localhost:8000/hello-js/greet?name=Ada'
