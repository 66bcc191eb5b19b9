/* The "New data source" page: a sample in, proposals and a live preview out, through the one preview
   service (POST /api/v1/sources/preview/). Modbus, MQTT and OPC UA sources have no sample: their register
   map, topics or nodes are edited as a table, checked as they change, and Test connection reads live values. Saving posts the form (the configuration and channels as JSON).
   An agent's file: the first request asks the agent (202 with agent_sample), then the page asks again every
   AGENT_POLL_MS until the lines arrive (200) or the server says the agent did not answer in time (400). */
(function () {
  "use strict";
  const state = JSON.parse(document.getElementById("setup-state").textContent);
  const form = document.getElementById("source-setup");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const $ = (id) => document.getElementById(id);
  const kindSelect = $("id_kind");
  const agentSelect = $("id_agent"); // absent when the person has no agent for this instrument
  const AGENT_POLL_MS = 1000;
  const WHERE = { file: ["path", "pattern"], serial: ["url"], tcp: ["host", "port"] };
  // Modbus, MQTT, OPC UA: no sample of lines; their list option (register map, topics, nodes) is edited as a
  // table, checked by the server as it changes, and Test connection reads a few live values.
  const EDITORS = state.entry_editors || {};
  const isProtocol = () => Boolean(EDITORS[kindSelect.value]);
  let config = Object.assign({}, state.initial.config || {});
  let channels = (state.channels || []).map((c) => Object.assign({ keep: true }, c));
  let sample = null; // {mode: "upload", file} | {mode: "text", text} | {mode: "folder"} | {mode: "agent", request}
  let timer = null;
  let busy = 0;

  $("id_name").value = state.initial.name || "";
  kindSelect.value = state.initial.kind || "file";
  $("id_interval").value = state.initial.interval_seconds || 60;
  if (state.initial.enabled === false) $("id_enabled").checked = false;
  if (agentSelect && state.initial.agent) agentSelect.value = String(state.initial.agent);
  const onAgent = () => Boolean(agentSelect && agentSelect.value);

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function showErrors(errors) {
    const box = $("setup-errors");
    box.replaceChildren();
    Object.entries(errors || {}).forEach(([field, messages]) => {
      [].concat(messages).forEach((message) => {
        box.appendChild(el("div", { class: "message message-error" }, field ? `${field}: ${message}` : message));
      });
    });
  }

  // --- the options, generated from the option tables -------------------------------------------------
  function fieldsFor(kind) {
    return state.schema[kind];
  }

  function getOption(name) {
    if (name.startsWith("timestamp.")) return (config.timestamp || {})[name.slice(10)];
    return config[name];
  }

  function setOption(name, value) {
    if (name.startsWith("timestamp.")) {
      const ts = Object.assign({}, config.timestamp || {});
      if (value === undefined) delete ts[name.slice(10)];
      else ts[name.slice(10)] = value;
      config.timestamp = ts;
    } else if (value === undefined) delete config[name];
    else config[name] = value;
  }

  function shown(value) {
    if (value === undefined || value === null) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function parsed(text, fallback) {
    if (text.trim() === "") return undefined;
    if (typeof fallback === "number") return Number(text);
    if (typeof fallback === "object" && fallback !== null) {
      try { return JSON.parse(text); } catch (e) { return text; }
    }
    if (/^\d+$/.test(text) && typeof fallback !== "string") return Number(text);
    return text;
  }

  function renderOptions() {
    const box = $("options");
    box.replaceChildren();
    const editor = EDITORS[kindSelect.value];
    fieldsFor(kindSelect.value).forEach((option) => {
      if (editor && option.name === editor.option) return; // the table below
      const id = `opt-${option.name.replace(".", "-")}`;
      const wrap = el("div", { class: "field" });
      const label = el("label", { for: id }, option.name + (option.required ? " *" : ""));
      let input;
      if (typeof option.default === "boolean") {
        input = el("input", { type: "checkbox", id });
        input.checked = getOption(option.name) === undefined ? option.default : !!getOption(option.name);
        input.addEventListener("change", () => { setOption(option.name, input.checked); schedule(); });
      } else {
        input = el("input", { type: "text", id, name: `option-${option.name}`, placeholder: shown(option.default) });
        input.value = shown(getOption(option.name));
        input.addEventListener("input", () => {
          const example = option.default !== undefined && option.default !== null ? option.default : (option.name === "port" ? 0 : "");
          setOption(option.name, parsed(input.value, option.name.endsWith(".columns") ? [] : example));
          schedule();
        });
      }
      wrap.append(label, input);
      if (option.help) wrap.appendChild(el("div", { class: "help" }, option.help));
      box.appendChild(wrap);
    });
    renderEntries();
    $("raw-config").value = JSON.stringify(config, null, 2);
    document.querySelectorAll("[data-kinds]").forEach((node) => {
      const where = node.dataset.where;
      node.hidden = !node.dataset.kinds.split(" ").includes(kindSelect.value) || (where !== undefined && where !== (onAgent() ? "agent" : "server"));
    });
    $("port-list-label").textContent = onAgent() ? "Serial ports of the agent's machine (its last heartbeat)" : "Serial ports of this server";
  }

  // --- a protocol's entries, as a table ---------------------------------------------------------------
  function renderEntries() {
    const editor = EDITORS[kindSelect.value];
    $("entries").hidden = !editor;
    if (!editor) return;
    $("entries-label").textContent = editor.label;
    const entries = Array.isArray(config[editor.option]) ? config[editor.option] : [];
    const head = el("tr");
    editor.columns.forEach((column) => head.appendChild(el("th", {}, column.name)));
    head.appendChild(el("th", {}, ""));
    $("entries-table").tHead.replaceChildren(head);
    const rows = entries.map((entry, index) => {
      const tr = el("tr");
      editor.columns.forEach((column) => {
        const td = el("td");
        const label = `${column.name} of entry ${index + 1}`;
        let input;
        if (column.choices) {
          input = el("select", { "aria-label": label, name: `entry-${index}-${column.name}` });
          column.choices.forEach((choice) => input.appendChild(el("option", { value: choice }, choice || "(default)")));
          input.value = entry[column.name] === undefined || entry[column.name] === null ? (column.choices.includes("") ? "" : column.choices[0]) : String(entry[column.name]);
        } else {
          input = el("input", { type: "text", "aria-label": label, name: `entry-${index}-${column.name}`, size: column.type === "text" ? 18 : 7 });
          input.value = shown(entry[column.name]);
        }
        input.addEventListener("change", () => {
          const v = input.value.trim();
          const updated = config[editor.option].slice();
          const changed = Object.assign({}, updated[index]);
          if (v === "") delete changed[column.name];
          else if ((column.type === "int" || column.type === "number") && v !== "" && !Number.isNaN(Number(v))) changed[column.name] = Number(v);
          else changed[column.name] = v;
          updated[index] = changed;
          config[editor.option] = updated;
          entriesChanged();
        });
        td.appendChild(input);
        tr.appendChild(td);
      });
      const remove = el("button", { type: "button", class: "btn btn-small", "aria-label": `Remove entry ${index + 1}` }, "Remove");
      remove.addEventListener("click", () => {
        config[editor.option] = config[editor.option].filter((_, i) => i !== index);
        renderEntries();
        entriesChanged();
      });
      const td = el("td"); td.appendChild(remove); tr.appendChild(td);
      return tr;
    });
    $("entries-table").tBodies[0].replaceChildren(...rows);
  }

  function entriesChanged() {
    $("raw-config").value = JSON.stringify(config, null, 2);
    clearTimeout(timer);
    timer = setTimeout(() => runPreview(false, { mode: "entries" }), 350); // checked; live values on Test connection
  }

  // The proposed channels of a protocol's entries: those already there (and edited) kept, new entries added.
  function mergeChannels(proposed) {
    const known = new Map(channels.map((c) => [c.source_field, c]));
    channels = proposed.map((c) => known.get(c.source_field) || Object.assign({ keep: true }, c));
    renderChannels();
  }

  // --- channels -------------------------------------------------------------------------------------
  const COLUMNS = ["source_field", "name", "slug", "kind", "units", "missing_values", "valid_min", "valid_max"];
  function renderChannels() {
    const body = $("channels").tBodies[0];
    body.replaceChildren();
    channels.forEach((channel, index) => {
      const row = el("tr");
      const keep = el("input", { type: "checkbox", "aria-label": `Keep channel ${channel.name}` });
      keep.checked = channel.keep !== false;
      keep.addEventListener("change", () => { channel.keep = keep.checked; schedule(); });
      const cell = el("td"); cell.appendChild(keep); row.appendChild(cell);
      COLUMNS.forEach((field) => {
        const td = el("td");
        let input;
        if (field === "kind") {
          input = el("select", { "aria-label": `${field} of channel ${index + 1}` });
          ["numeric", "text"].forEach((k) => input.appendChild(el("option", { value: k }, k)));
          input.value = channel.kind || "numeric";
        } else {
          input = el("input", { type: "text", "aria-label": `${field} of channel ${index + 1}`, size: field === "name" ? 18 : 9, name: `channel-${index}-${field}` });
          input.value = field === "missing_values" ? (channel.missing_values || []).join(", ") : shown(channel[field]);
        }
        input.addEventListener("change", () => {
          const v = input.value.trim();
          if (field === "missing_values") channel.missing_values = v ? v.split(/[,\s]+/).filter(Boolean).map(Number) : [];
          else if (field === "valid_min" || field === "valid_max") channel[field] = v === "" ? null : Number(v);
          else channel[field] = v;
          schedule();
        });
        td.appendChild(input);
        if (field === "units" && channel.note) td.appendChild(el("div", { class: "help" }, channel.note));
        row.appendChild(td);
      });
      body.appendChild(row);
    });
    if (!channels.length) {
      const row = el("tr"); row.appendChild(el("td", { colspan: 9, class: "muted" }, "Give a sample: a channel is proposed per column."));
      body.appendChild(row);
    }
  }

  function kept() {
    return channels.filter((c) => c.keep !== false).map((c) => {
      const out = {};
      ["name", "slug", "kind", "units", "source_field", "missing_values", "valid_min", "valid_max"].forEach((k) => { out[k] = c[k] === undefined ? null : c[k]; });
      if (out.units === null) out.units = "";
      if (out.missing_values === null) out.missing_values = [];
      return out;
    });
  }

  // --- the preview ----------------------------------------------------------------------------------
  function schedule() {
    if (isProtocol()) { entriesChanged(); return; }
    $("raw-config").value = JSON.stringify(config, null, 2);
    clearTimeout(timer);
    timer = setTimeout(() => runPreview(false), 350);
  }

  let previewSeq = 0; // answers to an older preview than the latest asked are not drawn over a newer one
  // A new sample's proposals (options and channels) are still to come: every preview asks for them until one
  // arrives. Otherwise an option changed while an agent is being polled would replace the poll with a plain
  // preview, and the agent's lines would arrive without their proposed channels.
  let proposalPending = false;
  // One poll of the agent at a time: any preview asked replaces the poll waiting to be sent (it polls on itself
  // while the agent has not answered), so two chains of polls never answer over each other.
  let pollTimer = null;

  async function runPreview(fresh, extra) {
    if (!sample && !extra) return;
    if (isProtocol()) return runProtocolPreview(extra || sample);
    if (fresh) proposalPending = true;
    fresh = fresh || proposalPending;
    clearTimeout(pollTimer);
    const mySeq = ++previewSeq;
    const data = new FormData();
    data.append("instrument", state.instrument);
    data.append("kind", kindSelect.value);
    let sent = config;
    if (fresh) { // a new sample: only where it reads is kept, everything else proposed afresh
      sent = {};
      (WHERE[kindSelect.value] || []).concat(["encoding", "request", "baudrate", "line_terminator", "timeout"]).forEach((k) => { if (config[k] !== undefined) sent[k] = config[k]; });
    }
    data.append("config", JSON.stringify(sent));
    if (!fresh) data.append("channels", JSON.stringify(kept()));
    const mode = extra || sample;
    if (mode.mode === "upload") data.append("sample", mode.file);
    if (mode.mode === "text") data.append("sample_text", mode.text);
    if (mode.mode === "connect") data.append("connect", "true");
    if (mode.mode === "agent" && mode.request) data.append("agent_sample", mode.request);
    else if (mode.mode === "agent") data.append("agent", agentSelect.value);
    busy += 1;
    // While an agent is being asked, its "waiting for the agent" message stays up between polls (no flicker).
    if (document.body.dataset.waiting !== "agent") $("preview-status").textContent = "Previewing…";
    try {
      const response = await fetch(state.preview_url, { method: "POST", body: data, headers: { "X-CSRFToken": csrf }, credentials: "same-origin" });
      const body = await response.json().catch(() => ({ detail: `The server answered ${response.status}.` }));
      if (mySeq !== previewSeq) return; // a newer preview was asked meanwhile: its answer is the one to show
      if (response.status === 202 && body.waiting) { // the agent has not sent the lines yet: ask again
        sample = { mode: "agent", request: body.agent_sample };
        $("preview-status").textContent = body.detail;
        document.body.dataset.waiting = "agent";
        pollTimer = setTimeout(() => runPreview(fresh), AGENT_POLL_MS);
        return;
      }
      document.body.dataset.waiting = "no";
      if (!response.ok) {
        showErrors({ [body.field || ""]: body.detail || JSON.stringify(body) });
        $("preview-status").textContent = "";
        if (mode.mode === "agent") sample = null; // timed out or refused: the next click asks afresh
        return;
      }
      if (mode.mode === "connect") sample = { mode: "text", text: body.raw.join("\n") + "\n" }; // read once, then previewed from these lines
      if (fresh) {
        proposalPending = false;
        config = body.config;
        channels = body.proposal.channels.map((c) => Object.assign({ keep: true }, c));
        renderOptions();
        renderChannels();
      }
      showErrors(body.errors);
      renderPreview(body);
    } finally {
      busy -= 1;
      document.body.dataset.previewing = busy ? "yes" : "no";
    }
  }

  // Modbus, MQTT, OPC UA: the configuration as it is (nothing proposed over it); with "connect", live values.
  async function runProtocolPreview(mode) {
    clearTimeout(pollTimer);
    const mySeq = ++previewSeq;
    const data = new FormData();
    data.append("instrument", state.instrument);
    data.append("kind", kindSelect.value);
    data.append("config", JSON.stringify(config));
    if (channels.length) data.append("channels", JSON.stringify(kept()));
    if (mode.mode === "connect") data.append("connect", "true");
    busy += 1;
    $("preview-status").textContent = mode.mode === "connect" ? "Reading live values…" : "Checking…";
    try {
      const response = await fetch(state.preview_url, { method: "POST", body: data, headers: { "X-CSRFToken": csrf }, credentials: "same-origin" });
      const body = await response.json().catch(() => ({ detail: `The server answered ${response.status}.` }));
      if (mySeq !== previewSeq) return;
      if (!response.ok) {
        showErrors({ [body.field || ""]: body.detail || JSON.stringify(body) });
        $("preview-status").textContent = "";
        return;
      }
      mergeChannels(body.proposal.channels);
      showErrors(body.errors);
      if (body.sample) renderPreview(body);
      else $("preview-status").textContent = Object.keys(body.errors).length ? "" : "The entries are valid: Test connection reads live values.";
    } finally {
      busy -= 1;
      document.body.dataset.previewing = busy ? "yes" : "no";
    }
  }

  function renderPreview(body) {
    $("sample-origin").textContent = `Sample: ${body.sample.origin}, ${body.sample.lines} line(s)${body.sample.truncated ? " (the first part of it)" : ""}.`;
    const questions = $("questions"); questions.replaceChildren();
    Object.entries(body.proposal.questions).forEach(([field, text]) => questions.appendChild(el("li", { class: "message message-warning" }, `${field}: ${text}`)));
    const notes = $("notes"); notes.replaceChildren();
    body.proposal.notes.forEach((text) => notes.appendChild(el("li", {}, text)));
    $("raw-lines").textContent = body.raw.join("\n");
    const table = $("preview");
    const head = el("tr");
    [isProtocol() ? "#" : "Line", "Time (UTC)", `Time (${(body.config.timestamp || {}).timezone || "UTC"})`].forEach((t) => head.appendChild(el("th", {}, t)));
    const names = body.rows.length && body.rows.find((r) => r.values) ? body.rows.find((r) => r.values).values.map((v) => v.slug) : [];
    names.forEach((n) => head.appendChild(el("th", {}, n)));
    table.tHead.replaceChildren(head);
    const rows = body.rows.map((row) => {
      const tr = el("tr");
      tr.appendChild(el("td", { class: "num" }, row.line));
      if (row.error) {
        tr.appendChild(el("td", { colspan: 2 + names.length, class: "error-text" }, `${row.error} — ${row.text}`));
        return tr;
      }
      tr.appendChild(el("td", { class: "nowrap" }, row.time_utc));
      tr.appendChild(el("td", { class: "nowrap" }, row.time_local));
      row.values.forEach((v) => {
        const text = v.stored ? shown(v.value) : `✗ ${v.raw === null ? "" : v.raw}`;
        const td = el("td", { class: v.stored ? (v.quality ? "warn" : "num") : "error-text", title: v.reason || "stored" }, text);
        if (v.reason) td.appendChild(el("div", { class: "help" }, v.reason));
        tr.appendChild(td);
      });
      return tr;
    });
    table.tBodies[0].replaceChildren(...rows);
    $("preview-status").textContent = `${body.rows.length} row(s) shown`;
  }

  // --- wiring ---------------------------------------------------------------------------------------
  $("id_sample").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (!file) return;
    sample = { mode: "upload", file };
    runPreview(true);
  });
  $("read-folder").addEventListener("click", () => { sample = { mode: "folder" }; runPreview(true); });
  $("ask-agent").addEventListener("click", () => { showErrors({}); sample = { mode: "agent" }; runPreview(true); });
  if (agentSelect) agentSelect.addEventListener("change", () => { sample = null; renderOptions(); if (kindSelect.value === "serial") loadPorts(); });
  $("test-connection").addEventListener("click", () => runPreview(!channels.length, { mode: "connect" }));
  $("test-protocol").addEventListener("click", () => { showErrors({}); sample = { mode: "connect" }; runPreview(false, sample); });
  $("add-entry").addEventListener("click", () => {
    const editor = EDITORS[kindSelect.value];
    config[editor.option] = (Array.isArray(config[editor.option]) ? config[editor.option] : []).concat([{}]);
    renderEntries();
  });
  kindSelect.addEventListener("change", () => {
    sample = null;
    const editor = EDITORS[kindSelect.value];
    if (editor && !Array.isArray(config[editor.option])) config = { [editor.option]: [{}] }; // another kind's options do not apply
    renderOptions();
    if (kindSelect.value === "serial") loadPorts();
    schedule();
  });
  $("raw-toggle").addEventListener("change", (event) => {
    $("raw-field").hidden = !event.target.checked;
    $("options").hidden = event.target.checked;
    if (!event.target.checked) renderOptions();
  });
  $("raw-config").addEventListener("input", () => {
    try { config = JSON.parse($("raw-config").value); showErrors({}); clearTimeout(timer); timer = setTimeout(() => runPreview(false), 350); }
    catch (e) { showErrors({ config: "not valid JSON yet" }); }
  });
  $("port-list").addEventListener("change", (event) => { if (event.target.value) { setOption("url", event.target.value); renderOptions(); } });

  async function loadPorts() {
    const url = onAgent() ? `${state.ports_url}?agent=${encodeURIComponent(agentSelect.value)}` : state.ports_url;
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) return;
    const list = $("port-list");
    list.replaceChildren(el("option", { value: "" }, "(choose, or type a device or URL below)"));
    (await response.json()).ports.forEach((p) => list.appendChild(el("option", { value: p.device }, `${p.device} — ${p.description}`)));
  }

  form.addEventListener("submit", () => {
    $("config-json").value = JSON.stringify(config);
    $("channels-json").value = JSON.stringify(kept());
  });

  if (isProtocol() && !Array.isArray(config[EDITORS[kindSelect.value].option])) config[EDITORS[kindSelect.value].option] = [{}];
  renderOptions();
  renderChannels();
  showErrors(state.errors);
  if (kindSelect.value === "serial") loadPorts();
  document.body.dataset.previewing = "no";
})();
