// Keeps the overview's "Running" table current: the runs going on and their progress, from
// /api/v1/status every two seconds. Everything else on the page is server-rendered.
(function () {
  "use strict";
  var table = document.getElementById("running");
  if (!table) { document.body.setAttribute("data-live", "off"); return; }
  var body = table.querySelector("tbody");

  function cell(row, text, href) {
    var td = document.createElement("td");
    if (href) { var a = document.createElement("a"); a.href = href; a.textContent = text; td.appendChild(a); }
    else { td.textContent = text; }
    row.appendChild(td);
    return td;
  }

  function progressText(p) {
    return Object.keys(p).map(function (k) { return k.replace(/_/g, " ") + " " + p[k]; }).join(" · ");
  }

  function draw(runs) {
    while (body.firstChild) { body.removeChild(body.firstChild); }
    if (!runs.length) {
      var none = document.createElement("tr"); none.className = "none";
      cell(none, "Nothing is running.").colSpan = 5; body.appendChild(none);
    }
    runs.forEach(function (r) {
      var row = document.createElement("tr");
      row.setAttribute("data-run-id", r.run_id);
      cell(row, r.run_id, "/runs/" + encodeURIComponent(r.run_id));
      cell(row, r.experiment);
      cell(row, r.trigger + (r.triggered_by ? " by " + r.triggered_by : ""));
      cell(row, r.state + (r.abort_requested_by ? " (abort requested by " + r.abort_requested_by + ")" : ""));
      cell(row, progressText(r.progress || {})).className = "progress";
      body.appendChild(row);
    });
    document.body.setAttribute("data-live", "on");
    document.body.setAttribute("data-running", String(runs.length));
  }

  function poll() {
    fetch("/api/v1/status", { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) { if (s) { draw(s.running || []); } })
      .catch(function () { document.body.setAttribute("data-live", "error"); });
  }
  poll();
  setInterval(poll, 2000);
})();
