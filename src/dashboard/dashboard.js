// Refreshes <main> from the same URL every few seconds, and posts the actions with the admin
// token as a Bearer header (a form cannot send one). The token is asked for once per page
// and kept in memory only. Without JavaScript the page is complete, just not refreshed.
(function () {
  var me = document.currentScript;
  var every = 1000 * Number((me && me.dataset.refresh) || 5);
  var token = null;
  var busy = false;
  var root = document.documentElement;
  // Marks the page live: the refresh runs (and tells the page how often it did).
  root.setAttribute("data-live", "on");
  function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var fresh = new DOMParser().parseFromString(text, "text/html").querySelector("main");
        var old = document.querySelector("main");
        if (fresh && old) {
          old.replaceWith(document.adoptNode(fresh));
          root.setAttribute("data-refreshed", String(Number(root.getAttribute("data-refreshed") || 0) + 1));
        }
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  setInterval(refresh, every);
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest("button[data-action]");
    if (!button) return;
    if (!token) token = window.prompt("Admin token (service.admin_token)");
    if (!token) return;
    var out = document.getElementById("action-result");
    fetch(button.dataset.action, { method: "POST", headers: { Authorization: "Bearer " + token } })
      .then(function (r) {
        if (r.status === 401) token = null;
        return r.text();
      })
      .then(function (text) { if (out) out.textContent = text; })
      .catch(function () { if (out) out.textContent = "the service did not answer"; });
  });
})();
