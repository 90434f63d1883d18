// conveyor dashboard: live updates. An element with data-live="<url>" listens to that
// server-sent event stream; each event's data is {"<element id>": "<html>"}, put in place.
// EventSource reconnects by itself when the server ends a stream.
document.querySelectorAll("[data-live]").forEach(function (element) {
  var source = new EventSource(element.dataset.live);
  source.onmessage = function (event) {
    var parts = JSON.parse(event.data);
    Object.keys(parts).forEach(function (id) {
      var target = document.getElementById(id);
      if (target) {
        target.innerHTML = parts[id];
        if (window.htmx) { htmx.process(target); }
        target.dataset.updated = String(Date.now());
      }
    });
  };
  window.addEventListener("pagehide", function () { source.close(); });
});
