// imagetext web app: small progressive enhancements; every page also works without JS.
(function () {
  "use strict";

  // Drop zones: drag a file onto the box, show its name and a preview before uploading.
  document.querySelectorAll("[data-dropzone]").forEach(function (zone) {
    var input = zone.querySelector("input[type=file]");
    var preview = zone.querySelector(".dropzone-preview");
    var name = zone.querySelector(".dropzone-name");
    var maxBytes = parseFloat(input.dataset.maxMb || "0") * 1e6;

    function show(file) {
      if (!file) return;
      name.textContent = file.name;
      input.setCustomValidity(maxBytes && file.size > maxBytes
        ? "This file is larger than the upload limit of " + input.dataset.maxMb + " MB." : "");
      if (file.type.indexOf("image/") === 0) {
        preview.src = URL.createObjectURL(file);
        zone.classList.add("has-preview");
      } else {
        zone.classList.remove("has-preview");
      }
    }
    input.addEventListener("change", function () { show(input.files[0]); });
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.add("dragover"); });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function () { zone.classList.remove("dragover"); });
    });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      if (e.dataTransfer && e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        show(input.files[0]);
      }
    });
  });

  // Forms that run a model: show that the server is working.
  document.querySelectorAll("form[data-busy]").forEach(function (form) {
    form.addEventListener("submit", function () {
      var button = form.querySelector("button[type=submit]");
      if (button) { button.classList.add("busy"); button.disabled = true; }
    });
  });

  // Classify: the moderation preset fills in its own labels.
  var labels = document.querySelector("textarea[data-own-labels]");
  if (labels) {
    var own = labels.value;
    var radios = document.querySelectorAll("input[name=preset]");
    var sync = function () {
      var preset = document.querySelector("input[name=preset]:checked");
      var moderation = preset && preset.value === "moderation";
      if (moderation) {
        if (!labels.disabled) own = labels.value;
        labels.value = labels.dataset.moderation;
      } else if (labels.disabled) {
        labels.value = own === labels.dataset.moderation ? "" : own;
      }
      labels.disabled = moderation;
      var template = document.querySelector("input[name=template]");
      if (template) template.disabled = moderation; // the preset has its own prompts
      var threshold = document.querySelector("input[name=threshold]");
      if (moderation && threshold && !threshold.value) threshold.value = threshold.dataset.moderationDefault;
    };
    radios.forEach(function (r) { r.addEventListener("change", sync); });
    sync();
  }

  // Gallery: open a result large, with its path, caption and "more like this".
  var dialog = document.getElementById("lightbox");
  if (dialog && typeof dialog.showModal === "function") {
    document.addEventListener("click", function (e) {
      var link = e.target.closest ? e.target.closest("a.tile-link") : null;
      if (!link || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
      e.preventDefault();
      var d = link.dataset;
      document.getElementById("lightbox-img").src = d.preview;
      document.getElementById("lightbox-img").alt = d.caption || d.path;
      document.getElementById("lightbox-path").textContent = d.path;
      document.getElementById("lightbox-caption").textContent = d.caption || "No caption stored.";
      document.getElementById("lightbox-score").textContent = d.score;
      document.getElementById("lightbox-score").hidden = !d.score;
      document.getElementById("lightbox-score-label").textContent = d.scoreLabel || "Score";
      document.getElementById("lightbox-score-label").hidden = !d.score;
      document.getElementById("lightbox-similar").href = d.similar;
      document.getElementById("lightbox-original").href = d.original;
      dialog.showModal();
    });
    dialog.addEventListener("click", function (e) {
      if (e.target === dialog) dialog.close(); // a click on the backdrop closes it
    });
  }
})();
