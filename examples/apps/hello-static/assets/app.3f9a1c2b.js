// A tiny history-API router. Links are relative to the injected <base>, so the app does not
// need to know whether it is mounted at /hello-static/ or /hello-static@1.0.0/.
const env = window.__env__ || {};
const base = new URL(document.baseURI).pathname;

const views = {
  "": () => `<h1>${escape(env.PUBLIC_GREETING || "Hello")}</h1>
    <p>This page is a static file served by marina itself.</p>`,
  about: () => `<h1>About</h1>
    <p>You reached <code>${escape(location.pathname)}</code>: a missing path without an
    extension, asked for by a page navigation, gets <code>index.html</code> (SPA fallback).
    A missing <code>.js</code> file would be a 404.</p>`,
};

function escape(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function render() {
  const route = location.pathname.startsWith(base) ? location.pathname.slice(base.length) : "";
  const view = views[route.replace(/\/$/, "")] || (() => `<h1>Not found</h1><p><a href="./" data-route>Home</a></p>`);
  document.getElementById("view").innerHTML = view();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-route]");
  if (!link || event.metaKey || event.ctrlKey || event.shiftKey) return;
  event.preventDefault();
  history.pushState(null, "", link.href);
  render();
});
window.addEventListener("popstate", render);
render();
