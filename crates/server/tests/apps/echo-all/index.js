// Test fixture: answers every request with what it received (method, path, all headers, body).
export default {
  async fetch(req) {
    const url = new URL(req.url);
    return Response.json({
      method: req.method,
      path: url.pathname + url.search,
      headers: Object.fromEntries(req.headers),
      body: await req.text(),
    });
  },
};
