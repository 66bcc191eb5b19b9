/* The admin's source configuration as a form generated from the option tables (instruments.forms.ConfigWidget):
   a labelled field per option of the chosen kind, with its help and default; errors beside the option they
   name; "Edit as JSON" shows the JSON itself. The textarea is what the form posts. */
(function () {
  "use strict";

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function shown(value) {
    if (value === undefined || value === null) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function read(text, example) {
    if (text.trim() === "") return undefined;
    if (typeof example === "number" || (example === null && /^-?\d+(\.\d+)?$/.test(text))) {
      const number = Number(text);
      return Number.isNaN(number) ? text : number;
    }
    // An option that takes a list or object (the default says so, or, for a required one, the text does:
    // a Modbus register map) is JSON.
    if ((typeof example === "object" && example !== null) || (example === null && /^\s*[[{]/.test(text))) {
      try { return JSON.parse(text); } catch (e) { return text; }
    }
    return text;
  }

  function setup(box) {
    const textarea = document.getElementById(box.dataset.for);
    const schema = JSON.parse(document.getElementById(box.dataset.schema).textContent);
    const errors = JSON.parse(document.getElementById(box.dataset.errors).textContent);
    const kind = document.getElementById(box.dataset.for.replace(/config$/, "kind"));
    const fields = box.querySelector(".config-fields");
    const toggle = box.querySelector(".config-raw-toggle");
    let config = {};

    function get(name) {
      const [head, tail] = name.split(".");
      return tail ? (config[head] || {})[tail] : config[head];
    }

    function set(name, value) {
      const [head, tail] = name.split(".");
      if (tail) {
        const section = Object.assign({}, config[head] || {});
        if (value === undefined) delete section[tail]; else section[tail] = value;
        if (Object.keys(section).length) config[head] = section; else delete config[head];
      } else if (value === undefined) delete config[head];
      else config[head] = value;
      textarea.value = JSON.stringify(config, null, 2);
    }

    function render() {
      fields.replaceChildren();
      let parsed = true;
      try { config = JSON.parse(textarea.value || "{}"); } catch (e) { parsed = false; }
      const options = kind && schema[kind.value];
      const raw = toggle.checked || !options || !parsed || typeof config !== "object" || config === null;
      textarea.hidden = !raw;
      if (raw) {
        if (!options && kind) fields.appendChild(el("p", { class: "help" }, "This kind's configuration is edited as JSON."));
        return;
      }
      const unclaimed = errors.slice();
      options.forEach((option) => {
        const id = `${box.dataset.for}-${option.name.replace(".", "-")}`;
        const row = el("div", { class: "config-option" });
        row.appendChild(el("label", { for: id, class: option.required ? "required" : "" }, option.name));
        let input;
        if (typeof option.default === "boolean") {
          input = el("input", { type: "checkbox", id });
          input.checked = get(option.name) === undefined ? option.default : Boolean(get(option.name));
          input.addEventListener("change", () => set(option.name, input.checked));
        } else {
          input = el("input", { type: "text", id, class: "vTextField", placeholder: shown(option.default) });
          input.value = shown(get(option.name));
          input.addEventListener("input", () => set(option.name, read(input.value, option.default)));
        }
        row.appendChild(input);
        errors.filter((message) => message.startsWith(`${option.name}:`) || message.startsWith(`${option.name}[`)).forEach((message) => {
          row.appendChild(el("ul", { class: "errorlist" }, message));
          unclaimed.splice(unclaimed.indexOf(message), 1);
        });
        if (option.help) row.appendChild(el("div", { class: "help" }, option.help));
        fields.appendChild(row);
      });
      unclaimed.forEach((message) => fields.prepend(el("ul", { class: "errorlist" }, message)));
    }

    toggle.addEventListener("change", render);
    if (kind) kind.addEventListener("change", render);
    render();
  }

  function start() { document.querySelectorAll(".config-form").forEach(setup); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
