// An endless Server-Sent Events stream: one event per second until the client leaves.
// marina streams it through without buffering; the request `timeout` covers only the time to
// the response headers, so the stream can run for as long as the client stays.
export default {
  fetch(req) {
    if (new URL(req.url).pathname !== "/events") {
      return new Response('<script>new EventSource("events").onmessage = (e) => document.body.append(e.data, " ")</script>', {
        headers: { "content-type": "text/html" },
      });
    }
    let timer;
    let n = 0;
    const body = new ReadableStream({
      start(controller) {
        const tick = () => controller.enqueue(new TextEncoder().encode(`id: ${n}\ndata: tick ${n++} at ${new Date().toISOString()}\n\n`));
        tick();
        timer = setInterval(tick, 1000);
      },
      cancel() {
        clearInterval(timer);
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream", "cache-control": "no-cache" } });
  },
};

// curl -N http://localhost:8000/sse-js/events
