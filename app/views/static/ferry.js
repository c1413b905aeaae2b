// Ferry's listing pages work without this file; it adds the "copy curl command" buttons, shows
// modification times in the reader's own time zone and, when the server takes writes, runs the
// upload panel: pick or drop files, each sent with a progress bar, the write token kept in this
// tab's sessionStorage. On a local ROOT each file goes by tus (/api/uploads/: a POST, then PATCHes
// of 8 MiB) and resumes: after a dropped connection by itself (retries with backoff), after a
// reload when the same file is chosen again (its upload's address is kept in localStorage). Where
// the server cannot resume (a bucket), one multipart POST per file. With that token in the tab, a "share" button per row copies a signed
// link (POST /api/sign) that reads the file, or everything in the folder, for a day. The "Download
// selected" form works without it; with it, its button waits for a ticked row and says how many,
// and the header's box ticks every row of the page.
"use strict";

(function () {
  // The site root, from this script's own address (<root>/_ferry/static/ferry.js): right behind
  // a path prefix too.
  var SITE = new URL("../../", (document.currentScript && document.currentScript.src) || window.location.href).href;
  var SHARE_TTL = "1d";

  function shellQuote(text) {
    return "'" + text.replace(/'/g, "'\\''") + "'";
  }

  // Saves under the file's exact name, taken from the link (the server sends a filename only for
  // links with a query, and curl -J would read its ASCII fallback).
  function curlCommand(href) {
    var url = new URL(href, window.location.href);
    url.hash = "";
    var name = decodeURIComponent(url.pathname.slice(url.pathname.lastIndexOf("/") + 1));
    if (name.charAt(0) === "-") {
      name = "./" + name; // never an option, nor "-" (standard output)
    }
    return "curl -fL -o " + shellQuote(name) + " " + shellQuote(url.href);
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

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      el.textContent =
        d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
        " " + pad(d.getHours()) + ":" + pad(d.getMinutes());
    });
  }

  function enhance(root) {
    root.querySelectorAll("button.copy[data-href]").forEach(function (button) {
      button.addEventListener("click", onCopy);
      button.hidden = false;
    });
    root.querySelectorAll("button.share[data-path]").forEach(function (button) {
      button.addEventListener("click", onShare);
    });
    showShares(root);
    localTimes(root);
    root.querySelectorAll("th.tick .tick-box").forEach(function (label) {
      label.hidden = false;
    });
    updateSelection();
  }

  // -- archives: "Download selected" -----------------------------------------------------------

  function tickBoxes() {
    return Array.prototype.slice.call(document.querySelectorAll("td.tick input[type=checkbox][name=select]"));
  }

  function updateSelection() {
    var form = document.getElementById("ferry-selection");
    if (!form) return;
    var boxes = tickBoxes();
    var ticked = boxes.filter(function (box) { return box.checked; }).length;
    boxes.forEach(function (box) {
      var row = box.closest("tr");
      if (row) row.classList.toggle("ticked-row", box.checked);
    });
    var button = form.querySelector("button.download-selected");
    if (button) button.disabled = ticked === 0;
    var count = form.querySelector(".ticked");
    if (count) count.textContent = ticked ? ticked + " selected" : "";
    var all = document.querySelector("input.tick-all");
    if (all) {
      all.checked = ticked > 0 && ticked === boxes.length;
      all.indeterminate = ticked > 0 && ticked < boxes.length;
    }
  }

  function onTick(event) {
    var target = event.target;
    if (!target || target.type !== "checkbox") return;
    if (target.classList.contains("tick-all")) {
      tickBoxes().forEach(function (box) { box.checked = target.checked; });
    } else if (target.name !== "select") {
      return;
    }
    updateSelection();
  }

  // -- share links -----------------------------------------------------------------------------

  function showShares(root) {
    var token = tokenStore.get();
    root.querySelectorAll("button.share[data-path]").forEach(function (button) {
      button.hidden = !token;
    });
  }

  function flashShare(button, label, className) {
    button.textContent = label;
    button.classList.add(className);
    window.setTimeout(function () {
      button.textContent = "share";
      button.classList.remove(className);
    }, 1500);
  }

  function onShare(event) {
    var button = event.currentTarget;
    var token = tokenStore.get();
    if (!token) return;
    var request = {
      path: button.getAttribute("data-path"),
      ttl: SHARE_TTL,
      prefix: button.hasAttribute("data-prefix"),
    };
    fetch(SITE + "api/sign", {
      method: "POST",
      headers: { Authorization: "Bearer " + token, "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(request),
      cache: "no-store",
    })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (link) {
        return copy(link.url).then(
          function () {
            flashShare(button, "copied", "done");
          },
          function () {
            window.prompt("Copy this link (it works for a day):", link.url);
          }
        );
      })
      .catch(function () {
        flashShare(button, "failed", "failed");
      });
  }

  // -- uploads ---------------------------------------------------------------------------------

  var TOKEN_KEY = "ferry.writeToken";
  var UNITS = ["KiB", "MiB", "GiB", "TiB", "PiB"];

  function humanSize(size) {
    if (size < 1024) return size + " B";
    var value = size;
    for (var i = 0; i < UNITS.length; i++) {
      value /= 1024;
      if (value < 1023.5 || i === UNITS.length - 1) {
        return (value < 99.95 ? value.toFixed(1) : value.toFixed(0)) + " " + UNITS[i];
      }
    }
  }

  // sessionStorage can be switched off; the token then lives as long as the page.
  var tokenStore = {
    memory: null,
    get: function () {
      try {
        return window.sessionStorage.getItem(TOKEN_KEY) || this.memory;
      } catch (e) {
        return this.memory;
      }
    },
    set: function (token) {
      this.memory = token;
      try {
        window.sessionStorage.setItem(TOKEN_KEY, token);
      } catch (e) {
        /* kept in memory only */
      }
    },
    clear: function () {
      this.memory = null;
      try {
        window.sessionStorage.removeItem(TOKEN_KEY);
      } catch (e) {
        /* nothing stored */
      }
    },
  };

  function errorDetail(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && typeof body.detail === "string") return body.detail;
    } catch (e) {
      /* not JSON */
    }
    return "failed (HTTP " + xhr.status + ")";
  }

  // -- resumable uploads: tus 1.0 at /api/uploads/, each upload's address kept across reloads -----

  var TUS_VERSION = "1.0.0";
  var CHUNK = 8 * 1024 * 1024; // bytes per PATCH; a PATCH cut off keeps what arrived anyway
  var RETRY_DELAYS = [1, 2, 4, 8, 15, 30]; // seconds before each retry in a row, then every 30 s
  var MAX_RETRIES = 20; // in a row without a byte stored; the upload is then left to resume later
  var RETRIED = [0, 408, 423, 429, 460, 500, 502, 503, 504]; // 460: bytes damaged on the way
  var RESUME_PREFIX = "ferry.upload ";

  // localStorage (this browser, every tab) keeps each unfinished upload's address under its folder,
  // file name, size and modification time: choosing the same file again continues it. The address
  // is of no use without the write token, which stays in the tab's sessionStorage.
  var resumeStore = {
    key: function (folder, file) {
      return RESUME_PREFIX + JSON.stringify([folder, file.name, file.size, file.lastModified || 0]);
    },
    get: function (key) {
      try {
        var value = JSON.parse(window.localStorage.getItem(key));
        if (value && typeof value.url === "string" && !(value.expires < Date.now())) return value;
        if (value) window.localStorage.removeItem(key); // expired: the server has dropped it too
      } catch (e) {
        /* none, or not ours */
      }
      return null;
    },
    set: function (key, value) {
      try {
        window.localStorage.setItem(key, JSON.stringify(value));
      } catch (e) {
        /* not kept: a reload starts that file over */
      }
    },
    remove: function (key) {
      try {
        window.localStorage.removeItem(key);
      } catch (e) {
        /* nothing stored */
      }
    },
    // The unfinished uploads into one folder, as [key, value] pairs.
    inFolder: function (folder) {
      var keys = [];
      try {
        for (var i = 0; i < window.localStorage.length; i++) {
          var key = window.localStorage.key(i);
          if (key && key.indexOf(RESUME_PREFIX) === 0) keys.push(key);
        }
      } catch (e) {
        return [];
      }
      var self = this;
      return keys.sort().map(function (key) { return [key, self.get(key)]; }).filter(function (pair) {
        return pair[1] && pair[1].folder === folder;
      });
    },
  };

  function base64(text) {
    var bytes = new TextEncoder().encode(text);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return window.btoa(binary);
  }

  function offsetField(xhr) {
    var value = xhr.getResponseHeader("Upload-Offset");
    return value !== null && /^\d+$/.test(value) ? Number(value) : NaN;
  }

  // What ended a step of an upload: "abort", "network", "token" (not sendable), "retry" (409: the
  // upload is elsewhere than this page thought) or "answer" (a refusal, in xhr).
  function Failure(kind, xhr) {
    this.kind = kind;
    this.xhr = xhr || null;
  }

  // DELETE an upload at the server; while its last PATCH is still being cut off there, it is 409.
  function terminate(url, token, attempt) {
    var xhr = new XMLHttpRequest();
    xhr.open("DELETE", url);
    try {
      xhr.setRequestHeader("Authorization", "Bearer " + token);
    } catch (e) {
      return;
    }
    xhr.setRequestHeader("Tus-Resumable", TUS_VERSION);
    xhr.addEventListener("load", function () {
      if (xhr.status === 409 && attempt < 5) {
        window.setTimeout(function () { terminate(url, token, attempt + 1); }, 1000);
      }
    });
    xhr.send();
  }

  function Uploader(panel) {
    this.panel = panel;
    this.ui = panel.querySelector(".upload-ui");
    this.form = panel.querySelector("form.token");
    this.input = panel.querySelector("#ferry-token");
    this.error = panel.querySelector(".token-error");
    this.picker = panel.querySelector("input[type=file]");
    this.forget = panel.querySelector("button.forget");
    this.list = panel.querySelector("ul.uploads");
    this.maxSize = Number(panel.getAttribute("data-max-size")) || Infinity;
    this.target = new URL("./", window.location.href).href; // this folder, without the query
    this.folder = panel.getAttribute("data-folder") || "";
    this.resumable = panel.hasAttribute("data-resumable") && Boolean(window.Promise && window.TextEncoder);
    this.queue = [];
    this.active = null;
    this.uploaded = [];
    this.paused = {}; // resume key -> the row of an upload left unfinished by an earlier page
    this.dragDepth = 0;
  }

  Uploader.prototype.start = function () {
    var self = this;
    this.form.addEventListener("submit", function (event) {
      event.preventDefault(); // never submitted: the token must not end up in a URL
      self.useToken(self.input.value.trim());
    });
    this.forget.addEventListener("click", function () {
      tokenStore.clear();
      self.askToken("");
    });
    this.picker.addEventListener("change", function () {
      self.add(self.picker.files);
      self.picker.value = "";
    });
    document.addEventListener("dragenter", function (e) { self.onDrag(e, 1); });
    document.addEventListener("dragleave", function (e) { self.onDrag(e, -1); });
    document.addEventListener("dragover", function (e) { self.onDrag(e, 0); });
    document.addEventListener("drop", function (e) { self.onDrop(e); });
    window.addEventListener("beforeunload", function (event) {
      if (self.active || self.queue.length) event.preventDefault(); // leaving would stop the uploads
    });
    window.addEventListener("online", function () { self.retryNow(); });
    this.showToken();
    if (this.resumable) this.showPaused();
    this.ui.hidden = false;
  };

  Uploader.prototype.showToken = function () {
    var stored = Boolean(tokenStore.get());
    this.form.hidden = stored;
    this.forget.hidden = !stored;
    showShares(document);
  };

  Uploader.prototype.askToken = function (message) {
    this.error.textContent = message;
    this.error.hidden = !message;
    this.showToken();
    this.input.value = "";
    this.input.focus();
  };

  Uploader.prototype.useToken = function (token) {
    if (!token) {
      this.askToken("Enter the write token.");
      return;
    }
    tokenStore.set(token);
    this.error.hidden = true;
    this.input.value = "";
    this.showToken();
    this.pump();
  };

  // -- dragging files over the page ----------------------------------------------------------

  function carriesFiles(event) {
    var types = event.dataTransfer && event.dataTransfer.types;
    return Boolean(types) && Array.prototype.indexOf.call(types, "Files") !== -1;
  }

  Uploader.prototype.onDrag = function (event, step) {
    if (!carriesFiles(event)) return;
    event.preventDefault(); // this page takes the drop instead of the browser opening the file
    if (step === 0) {
      event.dataTransfer.dropEffect = "copy";
      return;
    }
    this.dragDepth = Math.max(0, this.dragDepth + step);
    document.body.classList.toggle("dragging", this.dragDepth > 0);
  };

  Uploader.prototype.onDrop = function (event) {
    this.dragDepth = 0;
    document.body.classList.remove("dragging");
    if (!carriesFiles(event)) return;
    event.preventDefault();
    this.drop(event.dataTransfer);
  };

  // What a drop hands over: its files, folders marked so they can be refused (a folder arrives as a
  // File that cannot be read).
  Uploader.prototype.drop = function (transfer) {
    var files = Array.prototype.slice.call(transfer.files);
    var items = transfer.items ? Array.prototype.slice.call(transfer.items) : [];
    var fileItems = items.filter(function (item) { return item.kind === "file"; });
    if (fileItems.length === files.length) {
      fileItems.forEach(function (item, i) {
        var entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
        if (entry && entry.isDirectory) files[i] = { name: files[i].name, folder: true };
      });
    }
    this.add(files);
  };

  // -- the queue: one file at a time ---------------------------------------------------------

  Uploader.prototype.add = function (files) {
    for (var i = 0; i < files.length; i++) {
      var key = this.resumable && !files[i].folder ? resumeStore.key(this.folder, files[i]) : null;
      if (key && this.holds(key)) continue; // already on its way
      if (key && this.paused[key]) {
        this.list.removeChild(this.paused[key].li); // continued by the row added now
        delete this.paused[key];
      }
      var item = this.row(files[i]);
      item.key = key;
      if (files[i].folder) {
        this.finish(item, "error", "Folders cannot be uploaded; drop the files inside it");
      } else if (files[i].size > this.maxSize) {
        this.finish(item, "error", "Larger than this server accepts (" + humanSize(this.maxSize) + ")");
      } else {
        this.queue.push(item);
      }
    }
    this.pump();
  };

  Uploader.prototype.holds = function (key) {
    var same = function (item) { return item.key === key; };
    return Boolean(this.active && same(this.active)) || this.queue.some(same);
  };

  // The uploads an earlier page left unfinished in this folder: shown paused, continued when the
  // same file is chosen again, dropped (here and at the server) with ×.
  Uploader.prototype.showPaused = function () {
    var self = this;
    resumeStore.inFolder(this.folder).forEach(function (pair) {
      var stored = pair[1];
      var item = self.row({ name: String(stored.name), size: Number(stored.size) || 0 });
      item.key = pair[0];
      item.url = stored.url;
      item.paused = true;
      item.li.className = "paused";
      item.cancel.title = "Discard";
      item.cancel.setAttribute("aria-label", "Discard " + item.file.name);
      item.bar.value = Number(stored.offset) || 0;
      var done = Math.floor((100 * item.bar.value) / item.bar.max);
      self.setStatus(item, "Paused at " + done + "% · choose the file again to resume");
      self.paused[pair[0]] = item;
    });
  };

  Uploader.prototype.row = function (file) {
    var li = document.createElement("li");
    li.className = "queued";
    var head = document.createElement("div");
    head.className = "head";
    var name = document.createElement("span");
    name.className = "fname";
    name.textContent = file.name;
    name.title = file.name;
    var status = document.createElement("span");
    status.className = "status";
    var cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "cancel";
    cancel.textContent = "×";
    cancel.title = "Cancel";
    cancel.setAttribute("aria-label", "Cancel " + file.name);
    var bar = document.createElement("progress");
    bar.max = file.size || 1;
    bar.value = 0;
    bar.setAttribute("aria-label", file.name);
    head.appendChild(name);
    head.appendChild(status);
    head.appendChild(cancel);
    li.appendChild(head);
    li.appendChild(bar);
    this.list.appendChild(li);
    var item = { file: file, li: li, status: status, bar: bar, cancel: cancel, xhr: null, offset: 0 };
    var self = this;
    cancel.addEventListener("click", function () { self.cancel(item); });
    this.setStatus(item, "Waiting");
    return item;
  };

  Uploader.prototype.setStatus = function (item, text) {
    item.status.textContent = text;
  };

  Uploader.prototype.progress = function (item, sent) {
    var size = item.file.size;
    sent = Math.min(size, sent);
    item.bar.value = sent;
    if (sent >= size) {
      this.setStatus(item, "Saving…");
    } else {
      this.setStatus(item, Math.floor((100 * sent) / size) + "% · " + humanSize(sent) + " of " + humanSize(size));
    }
  };

  Uploader.prototype.finish = function (item, state, text) {
    item.li.className = state;
    item.cancel.hidden = true;
    item.xhr = null;
    if (state === "done") item.bar.value = item.bar.max;
    this.setStatus(item, text);
  };

  Uploader.prototype.cancel = function (item) {
    if (item.paused) {
      delete this.paused[item.key];
      this.abandon(item);
      this.list.removeChild(item.li);
      return;
    }
    item.cancelled = true;
    if (item.key) this.abandon(item);
    if (item.xhr) {
      item.xhr.abort(); // the server drops what this request sent
      return;
    }
    if (item.timer) {
      window.clearTimeout(item.timer); // waiting to retry
      item.timer = null;
      this.ended(item, "cancelled", "Cancelled");
      return;
    }
    var at = this.queue.indexOf(item);
    if (at !== -1) this.queue.splice(at, 1);
    this.finish(item, "cancelled", "Cancelled");
  };

  // An upload given up: forgotten here, and ended at the server when this tab has the token.
  Uploader.prototype.abandon = function (item) {
    var url = item.url || (resumeStore.get(item.key) || {}).url;
    resumeStore.remove(item.key);
    var token = tokenStore.get();
    if (url && token) terminate(url, token, 0);
    item.url = null;
  };

  Uploader.prototype.pump = function () {
    if (this.active) return;
    if (!this.queue.length) {
      if (this.uploaded.length) this.refresh(this.uploaded.splice(0));
      return;
    }
    var token = tokenStore.get();
    if (!token) {
      var self = this;
      this.queue.forEach(function (item) { self.setStatus(item, "Waiting for the token"); });
      this.askToken(this.error.hidden ? "" : this.error.textContent);
      return;
    }
    var item = this.queue.shift();
    if (this.resumable) {
      item.token = token;
      item.tries = 0;
      this.resume(item);
    } else {
      this.post(item, token);
    }
  };

  // -- one file, resumable: HEAD (where it stands) or POST (create), then PATCHes of CHUNK bytes --

  Uploader.prototype.resume = function (item) {
    var self = this;
    this.active = item;
    item.li.className = "active";
    if (!item.tries) this.setStatus(item, "Starting");
    var stored = item.url || (resumeStore.get(item.key) || {}).url;
    (stored ? this.head(item, stored) : this.create(item))
      .then(function () { return self.patch(item); })
      .then(
        function () { self.completed(item); },
        function (failure) { self.failed(item, failure); }
      );
  };

  // One request of an upload: any answer resolves (with the XHR), a failure to get one rejects.
  Uploader.prototype.call = function (item, method, url, headers, body) {
    var self = this;
    return new Promise(function (resolve, reject) {
      if (item.cancelled) {
        reject(new Failure("abort"));
        return;
      }
      var xhr = new XMLHttpRequest();
      xhr.open(method, url);
      try {
        xhr.setRequestHeader("Authorization", "Bearer " + item.token);
      } catch (e) {
        reject(new Failure("token"));
        return;
      }
      xhr.setRequestHeader("Tus-Resumable", TUS_VERSION);
      xhr.setRequestHeader("Accept", "application/json");
      Object.keys(headers).forEach(function (name) { xhr.setRequestHeader(name, headers[name]); });
      if (body) {
        xhr.upload.addEventListener("progress", function (event) { self.progress(item, item.offset + event.loaded); });
      }
      xhr.addEventListener("load", function () { resolve(xhr); });
      xhr.addEventListener("error", function () { reject(new Failure("network")); });
      xhr.addEventListener("abort", function () { reject(new Failure("abort")); });
      item.xhr = xhr;
      xhr.send(body || null);
    });
  };

  Uploader.prototype.remember = function (item, xhr) {
    resumeStore.set(item.key, {
      url: item.url,
      folder: this.folder,
      name: item.file.name,
      size: item.file.size,
      offset: item.offset,
      expires: Date.parse(xhr.getResponseHeader("Upload-Expires") || "") || null,
    });
  };

  // Where a known upload stands; one that is gone (expired, ended, another token's) starts over.
  Uploader.prototype.head = function (item, url) {
    var self = this;
    return this.call(item, "HEAD", url, {}).then(function (xhr) {
      var offset = offsetField(xhr);
      var ours = Number(xhr.getResponseHeader("Upload-Length")) === item.file.size;
      if (xhr.status === 200 && ours && offset <= item.file.size) {
        item.url = url;
        item.offset = offset;
        self.progress(item, offset);
        return undefined;
      }
      if (xhr.status !== 200 && xhr.status !== 404 && xhr.status !== 410) throw new Failure("answer", xhr);
      resumeStore.remove(item.key);
      item.url = null;
      return self.create(item);
    });
  };

  Uploader.prototype.create = function (item) {
    var self = this;
    var metadata = "filename " + base64(item.file.name) + (this.folder ? ",folder " + base64(this.folder) : "");
    var headers = { "Upload-Length": String(item.file.size), "Upload-Metadata": metadata };
    return this.call(item, "POST", SITE + "api/uploads/", headers).then(function (xhr) {
      var location = xhr.getResponseHeader("Location");
      var offset = offsetField(xhr);
      if (xhr.status !== 201 || !location || isNaN(offset)) throw new Failure("answer", xhr);
      // Below this page's own site, whichever host the server names (connect-src is 'self').
      item.url = SITE + "api/uploads/" + location.slice(location.lastIndexOf("/") + 1);
      item.offset = offset;
      self.remember(item, xhr);
    });
  };

  Uploader.prototype.patch = function (item) {
    var self = this;
    var size = item.file.size;
    if (item.offset >= size) return Promise.resolve();
    var body = item.file.slice(item.offset, Math.min(size, item.offset + CHUNK));
    var headers = { "Upload-Offset": String(item.offset), "Content-Type": "application/offset+octet-stream" };
    return this.call(item, "PATCH", item.url, headers, body).then(function (xhr) {
      var offset = offsetField(xhr);
      if (xhr.status === 204 && offset > item.offset && offset <= size) {
        item.offset = offset;
        item.tries = 0;
        self.remember(item, xhr);
        self.progress(item, offset);
        return self.patch(item);
      }
      if ((xhr.status === 404 || xhr.status === 410) && !item.restarted) {
        item.restarted = true; // expired or ended meanwhile: once more from the start
        resumeStore.remove(item.key);
        return self.create(item).then(function () { return self.patch(item); });
      }
      throw new Failure(xhr.status === 409 ? "retry" : "answer", xhr);
    });
  };

  Uploader.prototype.completed = function (item) {
    resumeStore.remove(item.key);
    this.uploaded.push(item.file.name);
    this.ended(item, "done", "Uploaded · " + humanSize(item.file.size));
  };

  Uploader.prototype.failed = function (item, failure) {
    item.xhr = null;
    if (!(failure instanceof Failure)) {
      this.ended(item, "error", "Failed: " + failure); // a fault of this page's own
      return;
    }
    var status = failure.xhr ? failure.xhr.status : 0;
    if (failure.kind === "abort" || item.cancelled) {
      this.ended(item, "cancelled", "Cancelled");
    } else if (failure.kind === "token") {
      this.unsendable(item);
    } else if (failure.kind !== "answer" || RETRIED.indexOf(status) !== -1) {
      this.retry(item);
    } else if (status === 401) {
      this.refused(item); // the upload stays: the right token continues it
    } else {
      this.abandon(item); // the server will not take it
      this.ended(item, "error", status === 405 ? "This server no longer accepts uploads" : errorDetail(failure.xhr));
    }
  };

  // After a failure, wait a little longer each time, then ask the server where the upload stands.
  Uploader.prototype.retry = function (item) {
    var self = this;
    item.tries += 1;
    if (item.tries > MAX_RETRIES) {
      this.ended(item, "error", "Connection failed · choose the file again to resume");
      return;
    }
    var delay = RETRY_DELAYS[Math.min(item.tries, RETRY_DELAYS.length) - 1];
    item.li.className = "active retrying";
    this.setStatus(item, "Connection lost · retrying in " + delay + " s");
    item.timer = window.setTimeout(function () {
      item.timer = null;
      self.setStatus(item, "Reconnecting…");
      self.resume(item);
    }, delay * 1000);
  };

  Uploader.prototype.retryNow = function () {
    var item = this.active;
    if (!item || !item.timer) return;
    window.clearTimeout(item.timer);
    item.timer = null;
    this.resume(item);
  };

  // -- one file, where the server cannot resume uploads (a bucket): one multipart POST ---------

  Uploader.prototype.post = function (item, token) {
    var self = this;
    var xhr = new XMLHttpRequest();
    var body = new FormData();
    body.append("file", item.file, item.file.name);
    xhr.open("POST", this.target);
    try {
      xhr.setRequestHeader("Authorization", "Bearer " + token);
    } catch (e) {
      this.unsendable(item);
      return;
    }
    xhr.setRequestHeader("Accept", "application/json");
    item.xhr = xhr;
    this.active = item;
    item.li.className = "active";
    this.setStatus(item, "Starting");
    xhr.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable) self.progress(item, Math.round((event.loaded / event.total) * item.file.size));
    });
    xhr.addEventListener("load", function () { self.answered(item, xhr); });
    xhr.addEventListener("error", function () { self.ended(item, "error", "Connection failed"); });
    xhr.addEventListener("abort", function () { self.ended(item, "cancelled", "Cancelled"); });
    xhr.send(body);
  };

  Uploader.prototype.answered = function (item, xhr) {
    if (xhr.status === 201) {
      try {
        JSON.parse(xhr.responseText).entries.forEach(function (e) { this.uploaded.push(e.name); }, this);
      } catch (e) {
        this.uploaded.push(item.file.name);
      }
      this.ended(item, "done", "Uploaded · " + humanSize(item.file.size));
    } else if (xhr.status === 401) {
      this.refused(item);
    } else if (xhr.status === 405) {
      this.ended(item, "error", "This server no longer accepts uploads");
    } else {
      this.ended(item, "error", errorDetail(xhr));
    }
  };

  // -- both ways ---------------------------------------------------------------------------------

  Uploader.prototype.refused = function (item) {
    tokenStore.clear();
    item.xhr = null;
    item.bar.value = item.url ? item.offset : 0;
    item.li.className = "queued";
    this.queue.unshift(item);
    this.active = null;
    this.error.textContent = "The server refused that token. Enter it again.";
    this.error.hidden = false;
    this.pump();
  };

  Uploader.prototype.unsendable = function (item) {
    tokenStore.clear();
    item.li.className = "queued";
    this.queue.unshift(item);
    this.active = null;
    this.askToken("That token has characters a browser cannot send.");
  };

  Uploader.prototype.ended = function (item, state, text) {
    this.finish(item, state, text);
    this.active = null;
    this.pump();
  };

  // -- the listing after uploads: the same page fetched again, its table swapped in ------------

  Uploader.prototype.refresh = function (names) {
    fetch(window.location.href, { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var table = fresh.querySelector("table.listing");
        var oldTable = document.querySelector("table.listing");
        if (!table || !oldTable) throw new Error("no listing");
        ["p.summary", "nav.pager", "div.archives"].forEach(function (selector) {
          var old = document.querySelector(selector);
          if (old) old.remove();
        });
        var summary = fresh.querySelector("p.summary");
        if (summary) document.querySelector("main h1").after(document.adoptNode(summary));
        table = document.adoptNode(table);
        oldTable.replaceWith(table);
        var archives = fresh.querySelector("div.archives"); // a folder that was empty has none yet
        if (archives) table.before(document.adoptNode(archives));
        var pager = fresh.querySelector("nav.pager");
        if (pager) table.after(document.adoptNode(pager));
        enhance(table);
        table.querySelectorAll("tr.file").forEach(function (row) {
          var label = row.querySelector("td.name .label");
          if (label && names.indexOf(label.textContent) !== -1) row.classList.add("fresh");
        });
      })
      .catch(function () {
        window.location.reload();
      });
  };

  function init() {
    document.addEventListener("change", onTick);
    window.addEventListener("pageshow", updateSelection); // ticks restored by Back
    enhance(document);
    var panel = document.querySelector("section.upload[data-max-size]");
    if (panel && window.FormData && window.XMLHttpRequest) {
      new Uploader(panel).start();
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
