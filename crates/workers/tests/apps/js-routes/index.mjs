// Test fixture: the `routes` form.
export default {
  routes: {
    "/static": new Response("a static response"),
    "/users/:id": (req) => Response.json({ id: req.params.id }),
    "/items": {
      GET: () => new Response("list items"),
      POST: async (req) => new Response(`created ${await req.text()}`, { status: 201 }),
    },
    "/files/*": (req) => new Response(`file ${req.params["*"]}`),
  },
  fetch(req) {
    return new Response(`fallback ${new URL(req.url).pathname}`, { status: 404 });
  },
};
