// ADDiagnosis web app: file upload (chooser and drag and drop) to the gateway's /upload endpoint.
// The file goes as the raw request body; the gateway stores it under a server-generated name and answers
// {"ok": true, "upload": ID} or {"ok": false, "error": "one line"}; the session then validates it.
(function () {
  "use strict";

  function trigger(name, args) {
    if (window.trame && window.trame.trigger) {
      return window.trame.trigger(name, args);
    }
    return Promise.resolve();
  }

  // prefix: the triggers' prefix, from the file input's data-trigger (a follow-up scan: addiagnosis_followup)
  async function send(file, prefix) {
    if (!file) {
      return;
    }
    prefix = prefix || "addiagnosis";
    await trigger(prefix + "_upload_started", [String(file.name || "scan"), Number(file.size || 0)]);
    let answer;
    try {
      const response = await fetch("upload?name=" + encodeURIComponent(file.name || "scan"), {
        method: "POST",
        body: file,
        credentials: "same-origin",
        headers: { "Content-Type": "application/octet-stream" },
      });
      answer = await response.json();
    } catch (err) {
      answer = { ok: false, error: "upload failed: " + (err && err.message ? err.message : "connection lost") };
    }
    if (answer && answer.ok) {
      await trigger(prefix + "_uploaded", [answer.upload, String(file.name || "scan")]);
    } else {
      await trigger(prefix + "_upload_failed", [String(file.name || "scan"), (answer && answer.error) || "upload failed"]);
    }
  }

  document.addEventListener("change", function (event) {
    const input = event.target;
    if (input && input.matches && input.matches("input.addiagnosis-file")) {
      const file = input.files && input.files[0];
      input.value = "";
      send(file, input.dataset.trigger);
    }
  });

  function isFileDrag(event) {
    const types = event.dataTransfer && event.dataTransfer.types;
    return types && Array.prototype.indexOf.call(types, "Files") >= 0;
  }

  document.addEventListener("dragover", function (event) {
    if (isFileDrag(event)) {
      event.preventDefault();
      document.body.classList.add("addiagnosis-dragging");
    }
  });
  document.addEventListener("dragleave", function (event) {
    if (!event.relatedTarget) {
      document.body.classList.remove("addiagnosis-dragging");
    }
  });
  document.addEventListener("drop", function (event) {
    if (isFileDrag(event)) {
      event.preventDefault();
      document.body.classList.remove("addiagnosis-dragging");
      // dropped on a box with its own file input (the follow-up scan's): that input's triggers
      const box = event.target && event.target.closest ? event.target.closest("label") : null;
      const input = box ? box.querySelector("input.addiagnosis-file") : null;
      send(event.dataTransfer.files[0], input ? input.dataset.trigger : undefined);
    }
  });

  window.addiagnosisUpload = send;
})();
