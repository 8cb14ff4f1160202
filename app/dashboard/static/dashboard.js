// Live figures for the mboxii-dlr dashboard: fetch the figures fragment every few seconds and
// swap it in. Pauses while the tab is hidden, on request, and while focus is inside the figures
// (so keyboard and screen-reader users are not moved). Written for this page; no library.
(function () {
  "use strict";
  var box = document.querySelector("[data-refresh-url]");
  if (!box || !window.fetch) return;
  var url = box.getAttribute("data-refresh-url");
  var period = Math.max(2, Number(box.getAttribute("data-refresh-seconds")) || 10) * 1000;
  var status = document.getElementById("refresh-status");
  var toggle = document.getElementById("refresh-toggle");
  var paused = false;
  var busy = false;
  var timer = null;

  function say(text) {
    if (status) status.textContent = text;
  }

  function schedule() {
    window.clearTimeout(timer);
    if (!paused && !document.hidden) timer = window.setTimeout(update, period);
  }

  function figures() {
    var values = {};
    box.querySelectorAll("[data-figure]").forEach(function (el) {
      values[el.getAttribute("data-figure")] = el.textContent;
    });
    return values;
  }

  function swap(html) {
    var before = figures();
    var open = [];
    box.querySelectorAll("details[open][id]").forEach(function (d) { open.push(d.id); });
    box.innerHTML = html;
    open.forEach(function (id) {
      var d = document.getElementById(id);
      if (d) d.open = true;
    });
    box.querySelectorAll("[data-figure]").forEach(function (el) {
      var name = el.getAttribute("data-figure");
      if (name !== "asof" && name in before && before[name] !== el.textContent) {
        var tile = el.closest(".tile") || el;
        tile.classList.remove("changed");
        void tile.offsetWidth; // restart the highlight animation
        tile.classList.add("changed");
      }
    });
  }

  function update() {
    if (busy || paused || document.hidden) return;
    if (box.contains(document.activeElement)) {
      say("Update held while you are in the figures.");
      schedule();
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload(); // the session ended: the page itself leads to the login
          throw new Error("session ended");
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        swap(html);
        say("Updated " + new Date().toLocaleTimeString() + "; every " + period / 1000 + " s.");
      })
      .catch(function () {
        say("Could not update the figures; trying again.");
      })
      .then(function () {
        busy = false;
        schedule();
      });
  }

  if (toggle) {
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.textContent = paused ? "Resume live updates" : "Pause live updates";
      if (paused) {
        window.clearTimeout(timer);
        say("Live updates paused.");
      } else {
        update();
      }
    });
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) window.clearTimeout(timer);
    else if (!paused) update();
  });

  schedule();
})();
