// Ballast console: small progressive enhancement. The pages work without it.
(function () {
  "use strict";

  // Live regions: every data-refresh seconds, re-read this page and swap each
  // [data-live] block in place. A block holding the focused field or a form the
  // operator has typed into is left alone, so nothing being typed is lost.
  var dirty = new WeakSet();
  document.addEventListener("input", function (e) {
    if (e.target.form) dirty.add(e.target.form);
  });

  function keep(block) {
    if (block.contains(document.activeElement) && document.activeElement !== document.body) return true;
    var forms = block.querySelectorAll("form");
    for (var i = 0; i < forms.length; i++) if (dirty.has(forms[i])) return true;
    return false;
  }

  function refresh() {
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "refresh" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (block) {
          var fresh = doc.querySelector('[data-live="' + block.dataset.live + '"]');
          if (fresh && !keep(block)) block.innerHTML = fresh.innerHTML;
        });
        stamp();
      })
      .catch(function () { /* the next tick tries again */ });
  }

  function stamp() {
    var s = document.querySelector("[data-live-stamp]");
    if (s) s.textContent = "refreshed " + new Date().toLocaleTimeString();
  }

  // A command just sent: poll where it stands; a worker's refusal goes beside its field.
  function watch(box) {
    var tries = 0;
    var state = box.querySelector(".state"), reason = box.querySelector(".reason");
    function tick() {
      fetch(box.dataset.watch, { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (d) {
          state.textContent = d.state;
          box.classList.add("state-" + d.state);
          if (d.state === "rejected") {
            reason.textContent = "— " + d.reason;
            var slot = document.querySelector('[data-error-for="' + box.dataset.field + '"]');
            if (slot) { slot.textContent = d.reason; slot.setAttribute("role", "alert"); }
          }
          if (d.state === "pending" && ++tries < 120) setTimeout(tick, 1000);
          else if (d.state === "applied") refresh();
        })
        .catch(function () { if (++tries < 120) setTimeout(tick, 2000); });
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var every = parseInt(document.body.dataset.refresh || "0", 10);
    if (every > 0) { stamp(); setInterval(refresh, every * 1000); }
    document.querySelectorAll(".notice[data-watch]").forEach(watch);
  });
})();
