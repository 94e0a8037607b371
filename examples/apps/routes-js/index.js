// The `routes` form: `:param` and `*` patterns, per-method objects, static Responses.
// Works under Bun and Node 20+ (plain .js, no TypeScript).
const todos = new Map([["1", { id: "1", title: "try marina" }]]);

export default {
  routes: {
    "/": () => Response.json({ try: ["GET /todos", "POST /todos {title}", "GET /todos/:id", "GET /assets/*"] }),
    "/health": new Response("ok"),
    "/todos": {
      GET: () => Response.json([...todos.values()]),
      POST: async (req) => {
        const { title } = await req.json();
        const id = String(todos.size + 1);
        todos.set(id, { id, title });
        return Response.json({ id, title }, { status: 201 });
      },
    },
    "/todos/:id": (req) => {
      const todo = todos.get(req.params.id);
      return todo ? Response.json(todo) : Response.json({ error: `no todo ${req.params.id}` }, { status: 404 });
    },
    "/assets/*": (req) => new Response(`asset ${req.params["*"]}`),
  },
  // Anything the routes do not match.
  fetch: () => new Response("not here", { status: 404 }),
};

// curl http://localhost:8000/routes-js/todos
// curl -X POST -d '{"title":"ship it"}' http://localhost:8000/routes-js/todos
// curl http://localhost:8000/routes-js/todos/1
