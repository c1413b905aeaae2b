// Ferry's listing pages work without this file; it adds the "copy curl command" buttons and
// shows modification times in the reader's own time zone.
"use strict";

(function () {
  function shellQuote(text) {
    return "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function curlCommand(href) {
    var url = new URL(href, window.location.href);
    url.hash = "";
    return "curl -fLOJ " + shellQuote(url.href);
  }

  function copyWithSelection(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "sr-only";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    document.body.removeChild(area);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () {
        return copyWithSelection(text);
      });
    }
    return copyWithSelection(text);
  }

  function flash(button, label, className) {
    button.textContent = label;
    button.classList.add(className);
    window.setTimeout(function () {
      button.textContent = "curl";
      button.classList.remove(className);
    }, 1500);
  }

  function onCopy(event) {
    var button = event.currentTarget;
    var command = curlCommand(button.getAttribute("data-href"));
    copy(command).then(
      function () {
        flash(button, "copied", "done");
      },
      function () {
        window.prompt("Copy this command:", command);
      }
    );
  }

  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function localTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      el.textContent =
        d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
        " " + pad(d.getHours()) + ":" + pad(d.getMinutes());
    });
  }

  function init() {
    document.querySelectorAll("button.copy[data-href]").forEach(function (button) {
      button.addEventListener("click", onCopy);
      button.hidden = false;
    });
    localTimes();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
