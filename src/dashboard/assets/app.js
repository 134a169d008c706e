// docfetch dashboard: confirmations, the request file picker, and live
// pages. A page whose <main> has data-live is fetched again when /events
// says the store changed, and its <main> swapped in place: no reload.
"use strict";

function bindForms(root) {
  root.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) {
        event.preventDefault();
      }
    });
  });
  var picker = root.querySelector("#request-file");
  if (picker) {
    picker.addEventListener("change", function () {
      var file = picker.files && picker.files[0];
      if (!file) { return; }
      var reader = new FileReader();
      reader.onload = function () {
        document.getElementById("request").value = String(reader.result);
        var format = document.getElementById("format");
        if (format) { format.value = /\.toml$/i.test(file.name) ? "toml" : "json"; }
      };
      reader.readAsText(file);
    });
  }
}

var refreshing = false;
var again = false;

function refresh() {
  var main = document.getElementById("main");
  if (!main || !main.hasAttribute("data-live")) { return; }
  if (refreshing) { again = true; return; }
  refreshing = true;
  fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
    .then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    })
    .then(function (text) {
      var doc = new DOMParser().parseFromString(text, "text/html");
      var fresh = doc.getElementById("main");
      if (fresh) {
        main.innerHTML = fresh.innerHTML;
        bindForms(main);
        document.body.setAttribute("data-refreshed", String(Date.now()));
      }
    })
    .catch(function () { /* the next change tries again */ })
    .then(function () {
      refreshing = false;
      if (again) { again = false; refresh(); }
    });
}

document.addEventListener("DOMContentLoaded", function () {
  bindForms(document);
  var main = document.getElementById("main");
  if (main && main.hasAttribute("data-live") && window.EventSource) {
    var source = new EventSource("/events");
    source.addEventListener("change", refresh);
  }
});
