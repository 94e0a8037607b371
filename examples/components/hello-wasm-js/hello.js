// A WebAssembly app written in JavaScript: componentize-js (SpiderMonkey inside the component)
// turns this file into a wasi:http/proxy component. Build it with ./build.sh.
addEventListener("fetch", (event) =>
  event.respondWith(
    new Response("hello from a javascript component\n", { headers: { "content-type": "text/plain" } }),
  ),
);
