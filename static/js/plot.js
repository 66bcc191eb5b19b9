/* DAQBroker plots: the plot page and dashboard panels.
 *
 * Readings come from /api/v1/samples/ (the query service): for the visible time range at about one
 * point per screen pixel, raw readings when few, otherwise downsampled buckets carrying the min/max
 * envelope (drawn as a band, so a one-reading spike still shows) and the mean. Zooming or panning asks
 * the server again for the new range; live mode appends the readings that arrived since the last
 * answer. Times are shown in the site's time zone (DAQBROKER_TIME_ZONE; kept in UTC milliseconds inside,
 * shifted only on the way to plotly and back). No framework, no build step: plotly.js is served by the app.
 */
(function () {
  "use strict";

  var RANGE_MS = { "1h": 3600e3, "1d": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  var COLORS = ["#1d4ed8", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4d7c0f",
    "#9333ea", "#ea580c", "#0f766e", "#be123c"];
  var LIVE_SECONDS = 3;
  var RECENT_KEY = "daqbroker.recentChannels";  // the channels this browser plotted lately (ids, newest first)
  var MIN_POINTS = 100, MAX_POINTS = 4000;

  // plotly.js is loaded with "defer" (the first readings are asked for while it is still being parsed, and
  // drawing waits for it): the 1.2 MB basic bundle (scatter, bar) unless the page opens on a histogram over
  // time, which needs the 1.5 MB cartesian one (heatmap). Compiling and running the bundle is most of a first
  // visit, so the larger one is fetched only when a heatmap is chosen (plotlyFor); a plot drawn by the basic
  // bundle is then drawn again from scratch by the cartesian one (draw), never by two plotly.js at once.
  var plotlyReady = new Promise(function (resolve) {
    if (window.Plotly) { resolve(); return; }
    // deferred scripts run before DOMContentLoaded
    document.addEventListener("DOMContentLoaded", function () { resolve(); });
    window.addEventListener("load", function () { resolve(); });
  });
  var cartesianReady = null;

  function needsCartesian(kind) { return kind === "heatmap"; }

  // Resolves once window.Plotly can draw this view kind (for a heatmap: the cartesian bundle, fetched once).
  function plotlyFor(kind) {
    if (!needsCartesian(kind)) return plotlyReady;
    if (!cartesianReady) {
      cartesianReady = plotlyReady.then(function () {
        var tag = document.getElementById("plotly-js");
        var src = tag && tag.dataset.cartesian;
        if (!src || tag.getAttribute("src") === src) return;  // the page loaded it already
        return new Promise(function (resolve, reject) {
          var script = document.createElement("script");
          script.src = src;
          script.onload = function () { resolve(); };
          script.onerror = function () { cartesianReady = null; reject(new Error("Could not load plotly.js (" + src + ").")); };
          document.head.appendChild(script);
        });
      });
    }
    return cartesianReady;
  }

  // Every user-written text handed to plotly (trace names, hover labels, axis titles, annotations) goes
  // through this: plotly renders a subset of HTML in them (<a href>, <span style>, <br>...), substitutes
  // %{...} in hover templates and treats $...$ as LaTeX. Entities are shown as the literal characters.
  function plotlyText(value) {
    return String(value == null ? "" : value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/%/g, "&#37;").replace(/\$/g, "&#36;");
  }

  function rgba(hex, alpha) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
  }

  function parseAxisTime(value) {
    // plotly gives "2026-11-27 10:00:00.1234": a wall time of the site's zone (see below)
    if (typeof value === "number") return unwall(value);
    var s = String(value).trim().replace(" ", "T");
    if (s.length === 10) s += "T00:00";
    s = s.replace(/(\.\d{3})\d+/, "$1");
    return unwall(Date.parse(s + "Z"));
  }

  // --- the site's time zone ------------------------------------------------------------------------
  // plotly draws a date axis as given (no time zones), so an instant is shifted by the zone's offset at
  // that instant ("wall" time, written as if UTC) on its way to the plot, and shifted back when read off
  // the axis. Offsets are looked up once per hour of time (Intl), so a zone's summer time is followed.
  var zone = { name: "UTC", format: null, offsets: {} };

  function setZone(name) {
    zone = { name: name || "UTC", format: null, offsets: {} };
    if (zone.name === "UTC") return;
    try {
      zone.format = new Intl.DateTimeFormat("en-US", { timeZone: zone.name, hourCycle: "h23", year: "numeric",
        month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
    } catch (e) {
      zone.name = "UTC"; // a zone this browser does not know: stay in UTC, and say so on the axis
    }
  }

  function zoneOffset(ms) {
    if (!zone.format) return 0;
    var hour = Math.floor(ms / 3600e3);
    if (zone.offsets[hour] === undefined) {
      var f = {};
      zone.format.formatToParts(new Date(hour * 3600e3)).forEach(function (p) { f[p.type] = p.value; });
      zone.offsets[hour] = Date.UTC(+f.year, +f.month - 1, +f.day, +f.hour, +f.minute, +f.second) - hour * 3600e3;
    }
    return zone.offsets[hour];
  }

  function wall(ms) { return ms + zoneOffset(ms); }
  function unwall(w) { return w - zoneOffset(w - zoneOffset(w)); }
  function walls(list) { return zone.format ? list.map(wall) : list; }

  function isoUtc(ms) { return new Date(ms).toISOString().replace(".000Z", "Z"); }
  // <input type="datetime-local"> and the dashboard form hold wall times of the site's zone.
  function localInput(ms) { return new Date(wall(ms)).toISOString().slice(0, 19); }
  function fromLocalInput(value) {
    return value ? unwall(Date.parse(value + (value.length === 16 ? ":00" : "") + "Z")) : NaN;
  }

  function fmtCount(n) { return n.toLocaleString("en-US"); }

  function fmtSpan(ms) {
    var s = ms / 1000;
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    if (s < 86400 * 730) return Math.round(s / 86400) + " days";
    return (s / 86400 / 365.25).toFixed(1) + " years";
  }

  // --- the API ------------------------------------------------------------------------------------

  function samplesUrl(base, channels, startMs, endMs, points, flagged, convert) {
    var q = new URLSearchParams();
    if (convert) q.set("convert", convert);
    q.set("channels", channels.map(function (c) { return c.id; }).join(","));
    q.set("start", String(Math.floor(startMs * 1000)));
    q.set("end", String(Math.ceil(endMs * 1000)));
    q.set("max_points", String(points));
    if (flagged) q.set("include_flagged", "true");
    return base + "?" + q.toString();
  }

  function exportUrl(base, channels, startMs, endMs, format, flagged, timeFormat) {
    var q = new URLSearchParams();
    q.set("channels", channels.map(function (c) { return c.id; }).join(","));
    q.set("start", String(Math.floor(startMs * 1000)));
    q.set("end", String(Math.ceil(endMs * 1000)));
    q.set("format", format);
    if (timeFormat) q.set("time_format", timeFormat);
    // As the plot shows them: flagged readings only when the plot shows them, then with their quality.
    if (flagged) { q.set("include_flagged", "true"); q.set("quality", "true"); }
    return base + "?" + q.toString();
  }

  // One series of the answer, as arrays the plot draws (times in ms).
  function normalize(item) {
    var t = (item.t || []).map(function (us) { return us / 1000; });
    var out = { channel: item.channel, source: item.source, t: t, tier: item.tier || null,
      bucketMs: item.bucket_us ? item.bucket_us / 1000 : null };
    if (item.source === "tier") {
      out.y = item.mean; out.min = item.min; out.max = item.max; out.count = item.count;
    } else {
      out.y = item.value; out.quality = item.quality || null;
    }
    return out;
  }

  function answerSeries(body) {
    var list = Array.isArray(body) ? body : (body.series || body.results || []);
    return list.map(normalize);
  }

  // Break the line where readings stop for a while (rather than drawing a straight line over a gap).
  function withGaps(s) {
    var n = s.t.length;
    if (n < 3) return s;
    var limit;
    if (s.bucketMs) {
      limit = s.bucketMs * 2.5;
    } else {
      var steps = [];
      for (var i = 1; i < n; i++) steps.push(s.t[i] - s.t[i - 1]);
      steps.sort(function (a, b) { return a - b; });
      limit = Math.max(steps[Math.floor(steps.length / 2)] * 10, 1);
    }
    var out = { t: [], y: [], min: s.min ? [] : null, max: s.max ? [] : null };
    for (var k = 0; k < n; k++) {
      if (k > 0 && s.t[k] - s.t[k - 1] > limit) {
        out.t.push(s.t[k - 1] + 1); out.y.push(null);
        if (out.min) { out.min.push(null); out.max.push(null); }
      }
      out.t.push(s.t[k]); out.y.push(s.y[k]);
      if (out.min) { out.min.push(s.min[k]); out.max.push(s.max[k]); }
    }
    return Object.assign({}, s, out);
  }

  // --- one plot -------------------------------------------------------------------------------------

  function Plot(root, options) {
    this.root = root;
    this.gd = root.querySelector(".plot");
    this.overlay = root.querySelector(".plot-overlay");
    this.statusEl = root.querySelector(".plot-status");
    this.opts = options;
    this.state = options.state;
    this.seq = 0;
    this.drawCount = 0;
    this.series = [];
    this.view = null; // [startMs, endMs] on screen
    this.quiet = false;
    this.liveTimer = null;
    this.relayoutTimer = null;
    this.requests = [];
    root.dataset.drawCount = "0";
    Plot.instances.push(this);
  }
  Plot.instances = [];

  Plot.prototype.points = function () {
    var width = this.gd.clientWidth || 800;
    return Math.max(MIN_POINTS, Math.min(MAX_POINTS, Math.round(width)));
  };

  Plot.prototype.extentStart = function () {
    var firsts = this.state.channels.map(function (c) { return c.firstTs; }).filter(function (v) { return v != null; });
    return firsts.length ? Math.min.apply(null, firsts) / 1000 : null;
  };

  Plot.prototype.latest = function () {
    var lasts = this.state.channels.map(function (c) { return c.lastTs; }).filter(function (v) { return v != null; });
    return lasts.length ? Math.max.apply(null, lasts) / 1000 : null;
  };

  // The window the state asks for, in ms. "All" runs from the first reading to the last (not to now); a
  // relative range (the last hour, day...) that holds no reading opens on the latest such span that has
  // data (imported history), and says so in the status line.
  Plot.prototype.window = function () {
    var now = Date.now();
    var st = this.state;
    this.shifted = false;
    if (st.range === "custom" && st.start != null && st.end != null) return [st.start, st.end];
    if (st.range === "since" && st.start != null) return [st.start, Math.max(now, st.start + 1000)]; // following a run
    var last = this.latest();
    if (st.range === "all") {
      var first = this.extentStart();
      if (first == null || last == null) return [now - RANGE_MS["1d"], now];
      var pad = Math.max((last - first) * 0.01, 1000);
      return [first - pad, last + pad];
    }
    var span = RANGE_MS[st.range] || RANGE_MS["1d"];
    if (last != null && last < now - span && !st.live) {
      this.shifted = true;
      return [last - span, last + Math.max(span * 0.01, 1000)];
    }
    return [now - span, now];
  };

  Plot.prototype.setOverlay = function (text) {
    this.overlay.textContent = text || "";
    this.overlay.style.display = text ? "flex" : "none";
  };

  Plot.prototype.load = function (reason) {
    var self = this;
    var range = this.view && reason !== "state" ? this.view : this.window();
    if (!this.state.channels.length) {
      this.series = [];
      return plotlyReady.then(function () {
        return self.draw(range);
      }).then(function () {
        self.setOverlay("Choose one or more channels to plot.");
        self.root.dataset.loading = "";
        self.root.dataset.drawCount = String(++self.drawCount);
      });
    }
    if (this.state.kind === "hist" || this.state.kind === "heatmap") return this.loadHistogram(range, reason);
    var seq = ++this.seq;
    var url = samplesUrl(this.opts.samplesUrl, this.state.channels, range[0], range[1], this.points(), this.state.flagged,
      this.convertParam());
    var started = performance.now();
    this.root.dataset.loading = "1";
    this.requests.push({ url: url, reason: reason, at: Date.now() });
    // The readings are asked for first: the server answers requests in the order they come, and on a first
    // visit the readings' answer is the one the drawing waits for (docs/performance.md#plot-page).
    var readings = fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    var runsLoaded = Promise.all([this.loadRuns(range), this.loadCurves(range)]);
    // Annotations never hold up the drawing. Arriving before the readings, they are drawn with them; after,
    // the readings are drawn again with them. Never the previous readings again while this load is on its
    // way: that would count as a drawing of this load.
    this.loadAnnotations(range).then(function () {
      if (seq === self.seq && !self.root.dataset.loading && self.notesToDraw()) {
        return plotlyReady.then(function () { if (seq === self.seq) return self.redraw(); });
      }
    });
    return readings
      .then(function (response) {
        if (!response.ok) throw new Error("The server answered " + response.status + ".");
        return response.json();
      })
      .then(function (body) { return runsLoaded.then(function () { return body; }); })
      .then(function (body) {
        if (seq !== self.seq) return; // a newer request superseded this one
        self.fetchMs = performance.now() - started;
        self.serverMs = body.elapsed_ms != null ? body.elapsed_ms : null;
        self.series = answerSeries(body);
        return plotlyReady;
      })
      .then(function () {
        if (seq !== self.seq) return;
        return self.draw(range);
      })
      .then(function () {
        if (seq !== self.seq) return;
        return new Promise(function (resolve) {
          requestAnimationFrame(function () {
            self.drawnMs = performance.now() - started;
            self.root.dataset.drawnAt = String(performance.now()); // ms since navigation began
            self.drawCount += 1;
            self.root.dataset.drawCount = String(self.drawCount);
            self.root.dataset.loading = "";
            self.root.dataset.lastReason = reason;
            self.renderStatus();
            resolve(self.notesToDraw() ? self.redraw() : undefined); // notes that came while it drew
          });
        });
      })
      .catch(function (error) {
        if (seq !== self.seq) return;
        self.root.dataset.loading = "";
        self.setOverlay("Could not load the readings: " + error.message);
      });
  };

  // --- histograms: counted by the server (/api/v1/histogram/) ---------------------------------------
  // "hist": one histogram per channel (the first MAX_HIST_CHANNELS), one request per y axis (the channels of
  // one unit share its limits and "shown in" unit), overlaid per unit, a panel per unit. "heatmap": one
  // channel's histogram over time (state.heat, default the first): counts of two channels cannot share
  // one colour scale, and a heatmap drawn over another hides it.
  var MAX_HIST_CHANNELS = 12;

  Plot.prototype.heatChannel = function () {
    var heat = this.state.heat, chosen = this.state.channels.filter(function (c) { return c.id === heat; })[0];
    return chosen || this.state.channels[0];
  };

  Plot.prototype.loadHistogram = function (range, reason) {
    var self = this, seq = ++this.seq, heatmap = this.state.kind === "heatmap", axes = this.axes();
    var shown = heatmap ? [this.heatChannel()] : this.state.channels.slice(0, MAX_HIST_CHANNELS);
    var groups = [];  // one request per y axis, in the axes' order
    axes.forEach(function (unit, i) {
      var members = shown.filter(function (c) { return (c.units || "") === unit; });
      if (members.length) groups.push({ axis: i + 1, unit: unit, channels: members });
    });
    var started = performance.now(), ready = plotlyFor(this.state.kind);  // fetched beside the counts
    ready.catch(function () {});  // (its failure is reported below, once the counts are in)
    this.root.dataset.loading = "1";
    var asks = groups.map(function (g) {
      var opt = (self.state.yaxes || {})[g.axis] || {};
      var q = new URLSearchParams();
      q.set("channels", g.channels.map(function (c) { return c.id; }).join(","));
      q.set("start", String(Math.floor(range[0] * 1000)));
      q.set("end", String(Math.ceil(range[1] * 1000)));
      q.set("bins", heatmap ? "60" : "80");
      if (heatmap) q.set("time_bins", String(Math.max(10, Math.min(200, Math.round(self.points() / 6)))));
      if (opt.min != null) q.set("lo", String(opt.min));
      if (opt.max != null) q.set("hi", String(opt.max));
      var convert = g.channels.filter(function (c) { return c.units && self.displayUnit(c) !== c.units; })
        .map(function (c) { return c.id + ":" + self.displayUnit(c); }).join(",");
      if (convert) q.set("convert", convert);
      var url = self.opts.histogramUrl + "?" + q.toString();
      self.requests.push({ url: url, reason: reason, at: Date.now() });
      return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          return response.json().then(function (body) {
            if (!response.ok) throw new Error(body.detail || JSON.stringify(body));
            return { axis: g.axis, body: body };
          });
        });
    });
    return Promise.all(asks)
      .then(function (answers) {
        if (seq !== self.seq) return;
        var list = [], server = 0;
        answers.forEach(function (a) {
          server += a.body.elapsed_ms || 0;
          a.body.histograms.forEach(function (h) { list.push(Object.assign({ axis: a.axis }, h)); });
        });
        self.histograms = list; self.series = [];
        self.histogramsLeftOut = heatmap ? 0 : Math.max(0, self.state.channels.length - MAX_HIST_CHANNELS);
        self.serverMs = server;
        return ready.then(function () { return self.draw(range); });
      })
      .then(function () {
        if (seq !== self.seq) return;
        self.drawnMs = performance.now() - started;
        self.drawCount += 1;
        self.root.dataset.drawCount = String(self.drawCount);
        self.root.dataset.loading = "";
        self.root.dataset.lastReason = reason;
        self.renderStatus();
      })
      .catch(function (error) {
        if (seq !== self.seq) return;
        self.root.dataset.loading = "";
        self.setOverlay("Could not count the readings: " + error.message);
      });
  };

  function centresOf(edges) {
    var out = [];
    for (var i = 0; i + 1 < edges.length; i++) out.push((edges[i] + edges[i + 1]) / 2);
    return out;
  }

  Plot.prototype.histogramFigure = function (range) {
    var list = this.histograms, info = this.byChannel(), opt = (this.state.yaxes || {})[1] || {};
    var compact = this.root.clientWidth < 640;
    var layout = {
      margin: { l: 60, r: 20, t: compact ? 10 : 30, b: 50 }, bargap: 0.02, barmode: "overlay",
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1e293b" },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#ffffff", dragmode: "zoom", uirevision: "keep",
      showlegend: false, annotations: [], shapes: []
    };
    if (this.state.kind === "heatmap") {
      var h = list[0], c = info[h.channel].facts;
      var unit = h.units ? " " + plotlyText(h.units) : "", centres = centresOf(h.edges), times = [];
      for (var k = 0; k + 1 < h.time_edges.length; k++) times.push(wall((h.time_edges[k] + h.time_edges[k + 1]) / 2000));
      var z = centres.map(function (_, v) { return h.counts.map(function (row) { return row[v] || null; }); });
      layout.xaxis = { type: "date", range: [wall(range[0]), wall(range[1])], autorange: false, gridcolor: "#eef2f7",
        title: { text: compact ? "" : plotlyText(zone.name.replace(/_/g, " ")), font: { size: 11, color: "#64748b" } } };
      layout.yaxis = { title: { text: plotlyText(c.name + (h.units ? " (" + h.units + ")" : "")) }, gridcolor: "#eef2f7", zeroline: false };
      return { layout: layout, traces: [{ type: "heatmap", x: times, y: centres, z: z, colorscale: "Viridis",
        colorbar: { title: { text: "readings" }, thickness: 12 }, hoverongaps: false,
        hovertemplate: "%{y:.6g}" + unit + ": %{z} readings<extra></extra>" }] };
    }
    // One panel per unit (stacked), the channels of that unit overlaid in it.
    var panels = [];
    list.forEach(function (h) { if (panels.indexOf(h.axis) < 0) panels.push(h.axis); });
    var gap = panels.length > 1 ? 0.2 : 0, height = (1 - gap * (panels.length - 1)) / panels.length, traces = [];
    layout.showlegend = list.length > 1;
    layout.legend = { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" };
    panels.forEach(function (axis, p) {
      var n = p === 0 ? "" : String(p + 1), top = 1 - p * (height + gap);
      var members = list.filter(function (h) { return h.axis === axis; });
      layout["xaxis" + n] = { title: { text: plotlyText(members[0].units || "value") }, gridcolor: "#eef2f7", zeroline: false,
        anchor: "y" + n };
      layout["yaxis" + n] = { title: { text: "readings" }, type: opt.log ? "log" : "linear", gridcolor: "#eef2f7",
        rangemode: "tozero", domain: [Math.max(0, top - height), top], anchor: "x" + n };
      members.forEach(function (h) {
        var meta = info[h.channel], unit = h.units ? " " + plotlyText(h.units) : "";
        traces.push({ type: "bar", x: centresOf(h.edges), y: h.counts, width: (h.edges[1] - h.edges[0]) * 0.98,
          xaxis: "x" + n, yaxis: "y" + n, name: plotlyText(meta.facts.name + (h.units ? " (" + h.units + ")" : "")),
          opacity: members.length > 1 ? 0.55 : 1, marker: { color: meta.color },
          hovertemplate: "%{x:.6g}" + unit + ": %{y} readings<extra>" + plotlyText(meta.facts.name) + "</extra>" });
      });
    });
    if (panels.length > 1) layout.margin.b = 40;
    return { layout: layout, traces: traces };
  };

  // Runs of the run lists that concern the plotted instruments, drawn as labelled bands (docs/runs.md).
  Plot.prototype.loadRuns = function (range) {
    var self = this;
    var slugs = [];
    this.state.channels.forEach(function (c) { if (c.instrumentSlug && slugs.indexOf(c.instrumentSlug) < 0) slugs.push(c.instrumentSlug); });
    if (!this.opts.runsUrl || !slugs.length) { this.runs = []; return Promise.resolve(); }
    var q = new URLSearchParams();
    q.set("instrument", slugs.join(","));
    q.set("start", isoUtc(range[0]));
    q.set("end", isoUtc(range[1]));
    q.set("limit", "200");
    return fetch(this.opts.runsUrl + "?" + q.toString(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : { results: [] }; })
      .then(function (body) { self.runs = body.results || []; })
      .catch(function () { self.runs = []; });
  };

  // Expression curves (a/temp - b/temp), computed by the server at the plot's resolution; a bad one keeps
  // its error message (shown in the Expressions menu) and draws nothing.
  Plot.prototype.loadCurves = function (range) {
    var self = this, list = this.state.exprs || [];
    if (!this.opts.expressionUrl || !list.length) { this.curves = []; return Promise.resolve(); }
    var points = Math.max(MIN_POINTS, Math.min(2000, Math.round(this.points() / 2)));
    return Promise.all(list.map(function (expression) {
      var q = new URLSearchParams();
      q.set("expression", expression);
      q.set("start", String(Math.floor(range[0] * 1000)));
      q.set("end", String(Math.ceil(range[1] * 1000)));
      q.set("max_points", String(points));
      return fetch(self.opts.expressionUrl + "?" + q.toString(), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          return response.json().then(function (body) {
            if (!response.ok) return { expression: expression, error: body.expression || body.detail || JSON.stringify(body) };
            return { expression: expression, t: body.t.map(function (us) { return us / 1000; }), y: body.value, sliceMs: body.slice_us / 1000 };
          });
        })
        .catch(function (error) { return { expression: expression, error: error.message }; });
    })).then(function (curves) { self.curves = curves; if (self.onCurves) self.onCurves(curves); });
  };

  // Logbook entries (dotted lines, the text on hover) and alarm events (red bands from raised to cleared)
  // of the plotted channels in the view, from /api/v1/annotations/ (bounded by the server).
  Plot.prototype.loadAnnotations = function (range) {
    var self = this;
    if (!this.opts.annotationsUrl || !this.state.channels.length) { this.notes = null; return Promise.resolve(); }
    var q = new URLSearchParams();
    q.set("channels", this.state.channels.map(function (c) { return c.id; }).join(","));
    q.set("start", String(Math.floor(range[0] * 1000)));
    q.set("end", String(Math.ceil(range[1] * 1000)));
    return fetch(this.opts.annotationsUrl + "?" + q.toString(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (body) { self.notes = body; })
      .catch(function () { self.notes = null; });
  };

  // Annotations that have arrived and are not on the plot yet (the last drawing was made without them).
  Plot.prototype.notesToDraw = function () {
    var notes = this.notes;
    return !!(this.view && notes && notes !== this.notesDrawn && (notes.logbook.length || notes.alarms.length));
  };

  Plot.prototype.noteShapes = function (range, layout) {
    var notes = this.notes, names = {};
    if (!notes) return;
    this.state.channels.forEach(function (c) { names[c.id] = c.name; });
    notes.alarms.forEach(function (a) {
      var start = Math.max(Date.parse(a.raised_at), range[0]), end = a.cleared_at ? Date.parse(a.cleared_at) : range[1];
      layout.shapes.push({ type: "rect", xref: "x", yref: "paper", x0: wall(start), x1: wall(Math.max(end, start)), y0: 0, y1: 1,
        fillcolor: a.severity === "critical" ? "rgba(220,38,38,0.12)" : "rgba(217,119,6,0.12)", line: { width: 0 }, layer: "below" });
      layout.annotations.push({ xref: "x", yref: "paper", x: wall(start), y: 0, xanchor: "left", yanchor: "bottom", showarrow: false,
        text: "⚠", font: { size: 12, color: "#b91c1c" },
        hovertext: plotlyText((names[a.channel] || "") + ": " + a.message + (a.cleared_at ? "" : " (active)")) });
    });
    notes.logbook.forEach(function (e) {
      var at = wall(Date.parse(e.time));
      layout.shapes.push({ type: "line", xref: "x", yref: "paper", x0: at, x1: at, y0: 0, y1: 1,
        line: { width: 1, dash: "dot", color: "#475569" } });
      layout.annotations.push({ xref: "x", yref: "paper", x: at, y: 0.98, xanchor: "left", yanchor: "top", showarrow: false,
        text: "✎", font: { size: 12, color: "#334155" },
        hovertext: plotlyText((e.author ? e.author + ": " : "") + e.text.slice(0, 300)) });
    });
  };

  Plot.prototype.runShapes = function (range, layout) {
    var now = Date.now();
    (this.runs || []).forEach(function (run, i) {
      var start = Date.parse(run.start), end = run.end ? Date.parse(run.end) : Math.max(now, range[1]);
      var active = !run.end;
      layout.shapes.push({ type: "rect", xref: "x", yref: "paper", x0: wall(start), x1: wall(end), y0: 0, y1: 1,
        fillcolor: active ? "rgba(22,163,74,0.10)" : (i % 2 ? "rgba(100,116,139,0.08)" : "rgba(37,99,235,0.08)"),
        line: { width: 0 }, layer: "below" });
      layout.annotations.push({ xref: "x", yref: "paper", x: wall(Math.max(start, range[0])), y: 1, xanchor: "left", yanchor: "top",
        text: plotlyText("run " + run.label + (active ? " (active)" : "")), showarrow: false,
        font: { size: 10, color: "#475569" } });
    });
  };

  Plot.prototype.byChannel = function () {
    var map = {};
    this.state.channels.forEach(function (c, i) { map[c.id] = { facts: c, color: COLORS[i % COLORS.length] }; });
    return map;
  };

  Plot.prototype.axes = function () {
    // One y-axis per unit, in the order the channels were chosen.
    var units = [];
    this.state.channels.forEach(function (c) { if (units.indexOf(c.units || "") < 0) units.push(c.units || ""); });
    return units;
  };

  // The readings of a raw answer split in two: the good ones (joined by the line) and the flagged ones
  // (drawn as markers only: a sentinel such as -9999 is never joined to the signal).
  function splitFlagged(s) {
    if (!s.quality) return { good: s, flagged: null };
    var good = { t: [], y: [] }, flagged = { t: [], y: [] };
    for (var i = 0; i < s.t.length; i++) {
      var into = s.quality[i] ? flagged : good;
      into.t.push(s.t[i]); into.y.push(s.y[i]);
    }
    return { good: Object.assign({}, s, good, { quality: null }), flagged: flagged.t.length ? flagged : null };
  }

  // The min/max envelope as closed polygons, one per stretch without a gap (separated by nulls, drawn
  // with fill "toself"): a band filled "tonexty" would be drawn straight across the gaps.
  function bandPolygons(s) {
    var x = [], y = [], seg = [];
    function flush() {
      if (!seg.length) return;
      var k;
      for (k = 0; k < seg.length; k++) { x.push(s.t[seg[k]]); y.push(s.max[seg[k]]); }
      for (k = seg.length - 1; k >= 0; k--) { x.push(s.t[seg[k]]); y.push(s.min[seg[k]]); }
      x.push(s.t[seg[0]]); y.push(s.max[seg[0]]);
      x.push(null); y.push(null);
      seg = [];
    }
    for (var i = 0; i < s.t.length; i++) {
      if (s.y[i] === null || s.min[i] === null || s.max[i] === null) flush(); else seg.push(i);
    }
    flush();
    return { x: x, y: y };
  }
  Plot.bandPolygons = bandPolygons;

  // The unit a channel is shown in: its axis's "show in" choice, else its own (the server converts).
  Plot.prototype.displayUnit = function (c) {
    var k = this.axes().indexOf(c.units || "") + 1, opt = (this.state.yaxes || {})[k];
    return opt && opt.unit ? opt.unit : (c.units || "");
  };

  Plot.prototype.convertParam = function () {
    var self = this;
    return this.state.channels.filter(function (c) { return c.units && self.displayUnit(c) !== c.units; })
      .map(function (c) { return c.id + ":" + self.displayUnit(c); }).join(",");
  };

  Plot.prototype.traces = function () {
    var info = this.byChannel(), units = this.axes(), traces = [];
    this.traceIndex = {};
    this.extents = {};  // axis -> [min, max, smallest positive] of the lines and bands (flagged markers excluded)
    this.flaggedAxes = {};
    var self = this;
    this.series.forEach(function (raw) {
      var meta = info[raw.channel];
      if (!meta) return;
      var parts = splitFlagged(raw);
      var s = withGaps(parts.good);
      var c = meta.facts, color = meta.color;
      var axis = units.indexOf(c.units || "");
      var yaxis = axis === 0 ? "y" : "y" + (axis + 1);
      var shown = self.displayUnit(c);
      var name = plotlyText(c.name + (shown ? " (" + shown + ")" : ""));
      var group = "ch" + c.id;
      var hoverUnits = shown ? " " + plotlyText(shown) : "";
      var index = { };
      self.widen(yaxis, s.min || s.y);
      if (s.max) self.widen(yaxis, s.max);
      if (s.source === "tier") {
        var band = bandPolygons(s);
        index.band = traces.length;
        traces.push({ x: walls(band.x), y: band.y, yaxis: yaxis, mode: "lines", line: { width: 1, color: rgba(color, 0.45) },
          fill: "toself", fillcolor: rgba(color, 0.18), legendgroup: group, showlegend: false, hoverinfo: "skip",
          type: "scatter", connectgaps: false });
      }
      index.line = traces.length;
      var few = s.t.length < 150;
      traces.push({
        x: walls(s.t), y: s.y, yaxis: yaxis, name: name, legendgroup: group, type: "scatter", connectgaps: false,
        mode: few ? "lines+markers" : "lines", marker: { size: 5, color: color }, line: { width: 1.6, color: color },
        hovertemplate: (s.source === "tier" ? "mean " : "") + "%{y:.6g}" + hoverUnits + "<extra></extra>"
      });
      if (parts.flagged) {
        index.flagged = traces.length;
        self.flaggedAxes[yaxis] = true;
        traces.push({ x: walls(parts.flagged.t), y: parts.flagged.y, yaxis: yaxis, name: plotlyText(c.name + " flagged"),
          legendgroup: group, type: "scatter", mode: "markers", marker: { symbol: "x", size: 8, color: "#b91c1c" },
          hovertemplate: "%{y:.6g}" + hoverUnits + " (flagged)<extra></extra>" });
      }
      self.traceIndex[c.id] = index;
    });
    var curveAxis = "y" + (units.length + 1);
    (this.curves || []).forEach(function (curve, i) {
      if (curve.error || !curve.t.length) return;
      var g = withGaps({ t: curve.t, y: curve.y, bucketMs: curve.sliceMs });
      traces.push({ x: walls(g.t), y: g.y, yaxis: units.length ? curveAxis : "y", name: "ƒ " + plotlyText(curve.expression),
        type: "scatter", mode: g.t.length < 150 ? "lines+markers" : "lines", connectgaps: false,
        line: { width: 2, dash: "dash", color: COLORS[(units.length + i) % COLORS.length] }, marker: { size: 5 },
        hovertemplate: "%{y:.6g}<extra>ƒ</extra>" });
    });
    return traces;
  };

  // The range of the good readings on an axis (what the autoscale follows when flagged markers are shown).
  Plot.prototype.widen = function (yaxis, values) {
    var e = this.extents[yaxis] || [Infinity, -Infinity, Infinity];
    for (var i = 0; i < values.length; i++) {
      var v = values[i];
      if (v === null || v === undefined || !isFinite(v)) continue;
      if (v < e[0]) e[0] = v;
      if (v > e[1]) e[1] = v;
      if (v > 0 && v < e[2]) e[2] = v;
    }
    this.extents[yaxis] = e;
  };

  Plot.prototype.layout = function (range) {
    var units = this.axes(), info = this.byChannel(), channels = this.state.channels;
    var compact = this.root.clientWidth < 640;
    var layout = {
      margin: { l: 60, r: units.length > 1 ? 60 : 20, t: 10, b: compact ? 90 : 40 },
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1e293b" },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#ffffff",
      hovermode: "x unified", dragmode: "zoom", uirevision: "keep",
      showlegend: true,
      legend: compact ? { orientation: "h", x: 0, y: -0.25 } : { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      xaxis: { type: "date", range: [wall(range[0]), wall(range[1])], autorange: false, showgrid: true,
        gridcolor: "#eef2f7", linecolor: "#cbd5e1", title: { text: compact ? "" : plotlyText(zone.name.replace(/_/g, " ")),
          font: { size: 11, color: "#64748b" } }, automargin: true },
      annotations: [],
      shapes: []
    };
    this.runShapes(range, layout);
    this.noteShapes(range, layout);
    if (!compact) layout.margin.t = 30;
    var self = this, options = this.state.yaxes || {};
    units.forEach(function (unit, i) {
      var first = channels.filter(function (c) { return (c.units || "") === unit; })[0];
      var color = info[first.id].color;
      var key = i === 0 ? "y" : "y" + (i + 1), opt = options[i + 1] || {};
      var axis = { title: { text: plotlyText(opt.unit || unit || "value"), font: { color: color } }, tickfont: { color: color }, automargin: true,
        showgrid: i === 0, gridcolor: "#eef2f7", zeroline: false, linecolor: "#cbd5e1", type: opt.log ? "log" : "linear",
        // each axis picks its own round ticks (1, 2, 5 x 10^n), never the left axis's grid positions
        tickmode: "auto", nticks: compact ? 6 : 9, exponentformat: "power" };
      if (i > 0) {
        axis.overlaying = "y";
        axis.side = i % 2 ? "right" : "left";
        if (i > 1) { axis.anchor = "free"; axis.autoshift = true; }
      }
      // Manual limits, or (with flagged markers on this axis) the good readings' range: a -9999 sentinel
      // never stretches the axis. Otherwise plotly's autoscale.
      var range = (opt.min != null || opt.max != null || self.flaggedAxes[key]) ?
        axisRange(opt.min, opt.max, self.extents[key], !!opt.log) : null;
      if (range) { axis.range = range; axis.autorange = false; } else { axis.autorange = true; }
      layout[i === 0 ? "yaxis" : "yaxis" + (i + 1)] = axis;
    });
    if (units.length && (this.curves || []).some(function (c) { return !c.error; })) {
      var n = units.length + 1;
      layout["yaxis" + n] = { title: { text: "ƒ expressions" }, overlaying: "y", side: n % 2 ? "left" : "right",
        anchor: n > 2 ? "free" : undefined, autoshift: n > 2 ? true : undefined, automargin: true, showgrid: false, zeroline: false };
      if (n === 2) layout.margin.r = 60;
    }
    return layout;
  };

  // An axis range from manual limits (either may be missing) and the data's extent [min, max, smallest
  // positive]; in log10 units for a log axis. Null when nothing sensible is known (plotly autoscales).
  function axisRange(lo, hi, extent, log) {
    var e = extent || [Infinity, -Infinity, Infinity];
    var dataLo = log ? e[2] : e[0], dataHi = e[1];
    var a = lo != null ? lo : dataLo, b = hi != null ? hi : dataHi;
    if (!isFinite(a) || !isFinite(b)) return null;
    if (log) {
      if (a <= 0 || b <= 0) return null;
      a = Math.log10(a); b = Math.log10(b);
    }
    var pad = (b - a) * 0.05 || Math.abs(a) * 0.05 || 1;
    if (lo == null) a -= pad;
    if (hi == null) b += pad;
    return b > a ? [a, b] : null;
  }
  Plot.axisRange = axisRange;

  Plot.prototype.draw = function (range) {
    var self = this;
    this.view = range;
    this.notesDrawn = this.notes;
    var traces, layout, empty;
    if ((this.state.kind === "hist" || this.state.kind === "heatmap") && this.histograms && this.histograms.length) {
      var figure = this.histogramFigure(range);
      traces = figure.traces; layout = figure.layout;
      empty = !this.histograms.some(function (h) { return h.total; });
    } else {
      traces = this.traces(); layout = this.layout(range);
      empty = !traces.some(function (t) { return t.x && t.x.length; });
    }
    this.setOverlay(this.state.channels.length && empty ? "No readings in this range." : "");
    this.quiet = true;
    if (this.plotly && this.plotly !== window.Plotly) {  // the cartesian bundle replaced the basic one
      this.plotly.purge(this.gd);
      this.listening = false;
    }
    this.plotly = window.Plotly;
    var result = Plotly.react(this.gd, traces, layout, {
      responsive: true, displaylogo: false, scrollZoom: true, showTips: false,
      modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "toImage"]
    });
    return Promise.resolve(result).then(function () {
      self.quiet = false;
      if (!self.listening) {
        self.listening = true;
        self.gd.on("plotly_relayout", function (ev) { self.onRelayout(ev); });
      }
    });
  };

  // Draw the same answer again (axis options changed: nothing to ask the server).
  Plot.prototype.redraw = function () {
    var self = this;
    if (!this.view) return Promise.resolve();
    return this.draw(this.view).then(function () { self.root.dataset.drawCount = String(++self.drawCount); });
  };

  Plot.prototype.onRelayout = function (ev) {
    if (this.quiet || this.state.kind === "hist") return; // a histogram's x axis is values, not time
    var start, end;
    if (ev["xaxis.range[0]"] !== undefined) {
      start = parseAxisTime(ev["xaxis.range[0]"]); end = parseAxisTime(ev["xaxis.range[1]"]);
    } else if (ev["xaxis.range"]) {
      start = parseAxisTime(ev["xaxis.range"][0]); end = parseAxisTime(ev["xaxis.range"][1]);
    } else if (ev["xaxis.autorange"]) {
      // double-click: back to the range the state asks for
      this.view = null;
      this.schedule("reset");
      return;
    } else {
      return; // a y-only zoom needs no new readings
    }
    if (!(end > start)) return;
    this.shifted = false;
    this.view = [start, end];
    if (this.opts.onZoom) this.opts.onZoom(start, end);
    this.schedule("zoom");
  };

  Plot.prototype.schedule = function (reason) {
    var self = this;
    clearTimeout(this.relayoutTimer);
    this.root.dataset.loading = "1"; // a load is coming: until it is drawn, what is shown is the previous view
    // A wheel zoom fires many events: ask once it settles (answers to superseded requests are dropped).
    this.relayoutTimer = setTimeout(function () { self.load(reason); }, 50);
  };

  // --- live mode: append what arrived since the last answer ---------------------------------------

  Plot.prototype.lastTime = function () {
    var last = null;
    this.series.forEach(function (s) { if (s.t.length && (last === null || s.t[s.t.length - 1] > last)) last = s.t[s.t.length - 1]; });
    return last;
  };

  Plot.prototype.setLive = function (on) {
    var self = this;
    clearInterval(this.liveTimer);
    this.liveTimer = null;
    this.root.dataset.live = on ? "1" : "";
    if (on) this.liveTimer = setInterval(function () { self.tick(); }, (this.opts.liveSeconds || LIVE_SECONDS) * 1000);
    this.renderStatus();
  };

  Plot.prototype.tick = function () {
    var self = this;
    if (!this.state.channels.length || this.ticking) return;
    if (this.state.kind === "hist" || this.state.kind === "heatmap") {  // counted again over the window that moved
      if (this.root.dataset.loading !== "1") { this.view = null; this.load("live"); }
      return;
    }
    var now = Date.now();
    var since = this.lastTime();
    var from = since === null ? (this.view ? this.view[0] : now - 3600e3) : since + 0.001;
    var url = samplesUrl(this.opts.samplesUrl, this.state.channels, from, now + 1000, 2000, this.state.flagged, this.convertParam());
    this.ticking = true;
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.ok ? r.json() : null; }).then(function (body) {
      self.ticking = false;
      if (!body) return;
      var fresh = answerSeries(body), added = 0;
      var x = [], y = [], which = [], redraw = false;
      fresh.forEach(function (s) {
        var index = self.traceIndex && self.traceIndex[s.channel];
        var target = self.series.filter(function (o) { return o.channel === s.channel; })[0];
        if (!s.t.length) return;
        added += s.t.length;
        if (target) {
          target.t = target.t.concat(s.t); target.y = target.y.concat(s.y);
          if (target.min) { target.min = target.min.concat(s.min || s.y); target.max = target.max.concat(s.max || s.y); }
          if (target.quality || s.quality) {
            target.quality = (target.quality || target.t.slice(0, target.t.length - s.t.length).map(function () { return 0; }))
              .concat(s.quality || s.t.map(function () { return 0; }));
          }
        } else {
          self.series.push(s);
        }
        // A band (closed polygons) or flagged markers are not extended point by point: drawn again.
        if (!index || index.band !== undefined || index.flagged !== undefined || s.quality) { redraw = true; return; }
        x.push(walls(s.t)); y.push(s.y); which.push(index.line);
      });
      if (!added) return;
      var span = self.view ? self.view[1] - self.view[0] : RANGE_MS["1h"];
      var end = Math.max(now, self.lastTime());
      self.view = [end - span, end];
      self.quiet = true;
      var done = which.length && !redraw ? self.plotly.extendTraces(self.gd, { x: x, y: y }, which) : Promise.resolve(self.draw(self.view));
      Promise.resolve(done).then(function () { return self.plotly.relayout(self.gd, { "xaxis.range": [wall(self.view[0]), wall(self.view[1])] }); })
        .then(function () {
          self.quiet = false;
          self.liveAppended = (self.liveAppended || 0) + added;
          self.root.dataset.liveAppended = String(self.liveAppended);
          self.setOverlay("");
          if (self.opts.onLive) self.opts.onLive(self.view);
          self.renderStatus();
        });
    }).catch(function () { self.ticking = false; });
  };

  Plot.prototype.renderStatus = function () {
    if (!this.statusEl) return;
    var parts = [];
    var total = 0, sources = {};
    this.series.forEach(function (s) {
      total += s.t.length;
      var word = s.source === "tier" ? "buckets of " + fmtSpan(s.bucketMs) + " (min/max band)" :
        s.source === "lttb" ? "downsampled readings (MinMax-LTTB)" : "every reading";
      sources[word] = true;
    });
    if (this.view) parts.push(fmtSpan(this.view[1] - this.view[0]) + " shown");
    var hs = this.histograms, names = {};
    this.state.channels.forEach(function (c) { names[c.id] = c.name; });
    if (hs && hs.length && (this.state.kind === "hist" || this.state.kind === "heatmap")) {
      hs.forEach(function (h) {
        parts.push((hs.length > 1 ? "" : "histogram of ") + names[h.channel] + ": " + fmtCount(h.total) + " readings" +
          (h.below || h.above ? " (" + fmtCount(h.below) + " below, " + fmtCount(h.above) + " above the limits)" : ""));
      });
      var estimated = hs.filter(function (h) { return h.exact < 1; }), tiers = hs.filter(function (h) { return h.source !== "raw"; });
      parts.push(!tiers.length ? "counted from every reading" : "counted from the " + tiers[0].source + " tier" +
        (estimated.length ? ", " + Math.round(estimated[0].exact * 100) + "% exactly (the rest estimated from each bucket's mean, spread and min..max)" : ", exactly"));
      if (this.histogramsLeftOut) parts.push("the first " + MAX_HIST_CHANNELS + " channels counted, " + this.histogramsLeftOut + " left out");
    }
    if (this.shifted) parts.push("nothing in the last " + fmtSpan(this.view[1] - this.view[0]) + ": the latest readings shown");
    if (this.series.length) parts.push(fmtCount(total) + " points: " + Object.keys(sources).join(", "));
    if (this.drawnMs != null) parts.push("drawn in " + Math.round(this.drawnMs) + " ms" +
      (this.serverMs != null ? " (server " + Math.round(this.serverMs) + " ms)" : ""));
    var html = parts.map(function (p) { return "<span>" + p.replace(/</g, "&lt;") + "</span>"; }).join("");
    if (this.liveTimer) html += '<span class="live-on">● live</span>';
    this.statusEl.innerHTML = html;
  };

  Plot.prototype.download = function (format) {
    var c = this.state.channels.map(function (ch) { return ch.slug; }).join("-") || "plot";
    (this.plotly || Plotly).downloadImage(this.gd, { format: format, filename: "daqbroker-" + c, width: this.gd.clientWidth,
      height: this.gd.clientHeight });
  };

  // --- the plot page ------------------------------------------------------------------------------

  function readState(config) {
    var q = new URLSearchParams(location.search);
    var state = { channels: config.channels.slice(), range: q.get("range") || "1d", start: null, end: null,
      flagged: q.get("flagged") === "1", live: q.get("live") === "1", yaxes: readAxes(q),
      kind: KINDS.indexOf(q.get("view")) >= 0 ? q.get("view") : "series", heat: Number(q.get("hc")) || null,
      exprs: q.getAll("e").filter(function (e) { return e.trim(); }).slice(0, 6) };
    if (state.range === "custom") {
      state.start = Date.parse(q.get("start") || "");
      state.end = Date.parse(q.get("end") || "");
      if (!(state.end > state.start)) { state.range = "1d"; state.start = state.end = null; }
    } else if (!RANGE_MS[state.range] && state.range !== "all") {
      state.range = "1d";
    }
    return state;
  }

  var KINDS = ["series", "hist", "heatmap"];

  // Per y axis (numbered as drawn, one per unit): "y2=log:1:1000" = log scale from 1 to 1000; either
  // limit may be left empty ("y1=lin::50": the top fixed, the bottom from the readings).
  function readAxes(q) {
    var out = {};
    for (var k = 1; k <= 12; k++) {
      var text = q.get("y" + k);
      if (!text) continue;
      var parts = text.split(":"), lo = parseFloat(parts[1]), hi = parseFloat(parts[2]);
      var unit = /^[\w\/^%. -]{1,40}$/.test(parts[3] || "") ? parts[3] : null;
      var axis = { log: parts[0] === "log", min: isFinite(lo) ? lo : null, max: isFinite(hi) ? hi : null, unit: unit };
      if (axis.min != null && axis.max != null && !(axis.max > axis.min)) { axis.min = axis.max = null; }
      if (axis.log || axis.min != null || axis.max != null || axis.unit) out[k] = axis;
    }
    return out;
  }

  function writeAxes(q, yaxes) {
    Object.keys(yaxes || {}).forEach(function (k) {
      var a = yaxes[k];
      if (!a.log && a.min == null && a.max == null && !a.unit) return;
      q.set("y" + k, (a.log ? "log" : "lin") + (a.min != null || a.max != null || a.unit ?
        ":" + (a.min != null ? a.min : "") + ":" + (a.max != null ? a.max : "") : "") + (a.unit ? ":" + a.unit : ""));
    });
  }

  function writeState(state, push) {
    var q = new URLSearchParams();
    if (state.channels.length) q.set("c", state.channels.map(function (c) { return c.id; }).join(","));
    q.set("range", state.range);
    if (state.range === "custom") { q.set("start", isoUtc(state.start)); q.set("end", isoUtc(state.end)); }
    if (state.flagged) q.set("flagged", "1");
    if (state.live) q.set("live", "1");
    if (state.kind && state.kind !== "series") q.set("view", state.kind);
    if (state.kind === "heatmap" && state.heat) q.set("hc", String(state.heat));
    writeAxes(q, state.yaxes);
    (state.exprs || []).forEach(function (e) { q.append("e", e); });
    var url = location.pathname + "?" + q.toString().replace(/%2C/g, ",").replace(/%3A/g, ":");
    if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
  }

  function page(config) {
    setZone(config.timeZone);
    var state = readState(config);
    var root = document.getElementById("main-plot");
    var plot = new Plot(root, {
      state: state, samplesUrl: config.samplesUrl, runsUrl: config.runsUrl, histogramUrl: config.histogramUrl,
      annotationsUrl: config.annotationsUrl, expressionUrl: config.expressionUrl,
      onZoom: function (start, end) {
        state.range = "custom"; state.start = start; state.end = end; writeState(state); syncControls();
      },
      onLive: function (view) {
        if (state.range === "custom") { state.start = view[0]; state.end = view[1]; writeState(state); }
      }
    });
    window.DAQPlot.main = plot;

    var rangeButtons = document.querySelectorAll("#range-buttons [data-range]");
    var customForm = document.getElementById("custom-range");
    var startInput = document.getElementById("range-start"), endInput = document.getElementById("range-end");
    var flaggedToggle = document.getElementById("flagged-toggle"), liveToggle = document.getElementById("live-toggle");
    var heatSelect = document.getElementById("heat-channel"), heatLabel = document.getElementById("heat-channel-label");

    function syncControls() {
      rangeButtons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.range === state.range)); });
      flaggedToggle.checked = state.flagged;
      liveToggle.checked = state.live;
      var view = plot.view || plot.window();
      startInput.value = localInput(view[0]);
      endInput.value = localInput(view[1]);
      var exports = [["export-csv", "csv"], ["export-csv-epoch_ms", "csv", "epoch_ms"],
        ["export-csv-matlab", "csv", "matlab"], ["export-csv-igor", "csv", "igor"], ["export-parquet", "parquet"],
        ["export-netcdf", "netcdf"], ["export-hdf5", "hdf5"]];
      exports.forEach(function (pair) {
        var link = document.getElementById(pair[0]);
        if (!state.channels.length) { link.removeAttribute("href"); return; }
        link.href = exportUrl(config.exportUrl, state.channels, view[0], view[1], pair[1], state.flagged, pair[2]);
      });
      document.getElementById("picked-count").textContent = state.channels.length + " selected";
      // the histogram over time's channel: shown when there is a choice
      var choosing = state.kind === "heatmap" && state.channels.length > 1;
      heatSelect.hidden = heatLabel.hidden = !choosing;
      heatSelect.innerHTML = "";
      state.channels.forEach(function (c) {
        var option = document.createElement("option"); option.value = String(c.id); option.textContent = c.name; heatSelect.appendChild(option);
      });
      if (state.channels.length) heatSelect.value = String(plot.heatChannel().id);
    }

    function reload(push) {
      plot.view = null;
      writeState(state, push);
      plot.load("state").then(syncControls);
      syncControls();
    }

    rangeButtons.forEach(function (button) {
      button.addEventListener("click", function () {
        if (button.dataset.range === "custom") {
          customForm.classList.toggle("open");
          startInput.focus();
          return;
        }
        customForm.classList.remove("open");
        state.range = button.dataset.range; state.start = state.end = null;
        reload(true);
      });
    });
    customForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var start = fromLocalInput(startInput.value), end = fromLocalInput(endInput.value);
      if (!(end > start)) { endInput.setCustomValidity("The end must be after the start."); endInput.reportValidity(); return; }
      endInput.setCustomValidity("");
      state.range = "custom"; state.start = start; state.end = end;
      reload(true);
    });
    // The "Y axes" menu: log scale and limits per axis (one axis per unit), kept in the link.
    var axesPanel = document.getElementById("yaxes-panel");
    function renderAxes() {
      axesPanel.innerHTML = "";
      var units = plot.axes();
      if (!units.length) { axesPanel.textContent = "Choose channels first."; return; }
      units.forEach(function (unit, i) {
        var k = i + 1, opt = state.yaxes[k] || {};
        var row = document.createElement("fieldset");
        row.className = "yaxis-row"; row.dataset.axis = String(k);
        var legend = document.createElement("legend"); legend.textContent = "Axis " + k + ": " + (unit || "no unit");
        var log = document.createElement("label"); log.className = "checkbox small";
        var box = document.createElement("input"); box.type = "checkbox"; box.name = "log"; box.checked = !!opt.log;
        log.appendChild(box); log.appendChild(document.createTextNode(" Log scale"));
        row.appendChild(legend); row.appendChild(log);
        ["min", "max"].forEach(function (which) {
          var label = document.createElement("label"); label.className = "small";
          var input = document.createElement("input"); input.type = "number"; input.step = "any"; input.name = which;
          input.placeholder = "auto"; input.size = 8; input.value = opt[which] != null ? String(opt[which]) : "";
          input.setAttribute("aria-label", "Axis " + k + " " + which);
          label.appendChild(document.createTextNode(which === "min" ? "from " : " to "));
          label.appendChild(input);
          row.appendChild(label);
        });
        var choices = [];
        state.channels.forEach(function (c) { if ((c.units || "") === unit && c.unitChoices && c.unitChoices.length > choices.length) choices = c.unitChoices; });
        if (choices.length > 1) {
          var showIn = document.createElement("label"); showIn.className = "small";
          var pick = document.createElement("select"); pick.name = "unit";
          pick.setAttribute("aria-label", "Axis " + k + " shown in");
          [unit].concat(choices.filter(function (u) { return u !== unit; })).forEach(function (u) {
            var option = document.createElement("option"); option.value = u; option.textContent = u; pick.appendChild(option);
          });
          pick.value = opt.unit || unit;
          showIn.appendChild(document.createTextNode("shown in ")); showIn.appendChild(pick);
          row.appendChild(showIn);
        }
        axesPanel.appendChild(row);
      });
      var apply = document.createElement("button"); apply.type = "button"; apply.className = "btn btn-primary btn-small";
      apply.id = "yaxes-apply"; apply.textContent = "Apply";
      var reset = document.createElement("button"); reset.type = "button"; reset.className = "btn btn-small";
      reset.textContent = "All automatic";
      var error = document.createElement("p"); error.className = "small error"; error.id = "yaxes-error";
      apply.addEventListener("click", function () {
        var next = {}, problem = "";
        axesPanel.querySelectorAll(".yaxis-row").forEach(function (row) {
          var lo = row.querySelector("[name=min]").value, hi = row.querySelector("[name=max]").value;
          var pick = row.querySelector("[name=unit]"), own = plot.axes()[Number(row.dataset.axis) - 1];
          var axis = { log: row.querySelector("[name=log]").checked, min: lo === "" ? null : Number(lo), max: hi === "" ? null : Number(hi),
            unit: pick && pick.value !== own ? pick.value : null };
          if (axis.min != null && axis.max != null && !(axis.max > axis.min)) problem = "Axis " + row.dataset.axis + ": the top must be above the bottom.";
          if (axis.log && ((axis.min != null && axis.min <= 0) || (axis.max != null && axis.max <= 0))) problem = "Axis " + row.dataset.axis + ": a log scale's limits are above 0.";
          next[row.dataset.axis] = axis;
        });
        error.textContent = problem;
        if (problem) return;
        state.yaxes = next; plot.state = state; writeState(state);
        document.getElementById("yaxes-menu").open = false;
        plot.load("axes");  // new limits may need no new readings, but a new unit does: ask again
      });
      reset.addEventListener("click", function () {
        state.yaxes = {}; writeState(state); renderAxes();
        document.getElementById("yaxes-menu").open = false;
        plot.load("axes");
      });
      axesPanel.appendChild(error); axesPanel.appendChild(apply); axesPanel.appendChild(reset);
    }
    document.getElementById("yaxes-menu").addEventListener("toggle", renderAxes);

    // Expressions: curves over channels of any instruments, kept in the link (e=...).
    var exprForm = document.getElementById("expr-form"), exprInput = document.getElementById("expr-input");
    var exprList = document.getElementById("expr-list");
    function renderCurves(curves) {
      exprList.innerHTML = "";
      (state.exprs || []).forEach(function (expression, i) {
        var item = document.createElement("li"), text = document.createElement("code"), remove = document.createElement("button");
        text.textContent = expression;
        remove.type = "button"; remove.className = "btn btn-small"; remove.textContent = "Remove";
        remove.addEventListener("click", function () { state.exprs.splice(i, 1); writeState(state); renderCurves([]); plot.load("expression"); });
        item.appendChild(text); item.appendChild(document.createTextNode(" ")); item.appendChild(remove);
        var curve = (curves || []).filter(function (c) { return c.expression === expression; })[0];
        if (curve && curve.error) {
          var error = document.createElement("p"); error.className = "small error expr-error"; error.textContent = curve.error;
          item.appendChild(error);
        }
        exprList.appendChild(item);
      });
    }
    plot.onCurves = renderCurves;
    exprForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var expression = exprInput.value.trim();
      if (!expression) return;
      state.exprs = (state.exprs || []).concat([expression]).slice(-6);
      exprInput.value = "";
      writeState(state, true);
      plot.load("expression");
    });
    renderCurves([]);

    heatSelect.addEventListener("change", function () {
      state.heat = Number(heatSelect.value); plot.state = state; writeState(state, true); plot.load("kind").then(syncControls);
    });
    var kindSelect = document.getElementById("view-kind");
    kindSelect.value = state.kind;
    kindSelect.addEventListener("change", function () { state.kind = kindSelect.value; plot.state = state; writeState(state, true); plot.load("kind").then(syncControls); });

    flaggedToggle.addEventListener("change", function () { state.flagged = flaggedToggle.checked; plot.state = state; writeState(state); plot.load("flagged").then(syncControls); });
    liveToggle.addEventListener("change", function () {
      state.live = liveToggle.checked;
      writeState(state);
      plot.setLive(state.live);
    });
    document.getElementById("image-png").addEventListener("click", function () { plot.download("png"); });
    document.getElementById("image-svg").addEventListener("click", function () { plot.download("svg"); });
    document.getElementById("copy-link").addEventListener("click", function (ev) {
      var button = ev.currentTarget;
      var done = function () { button.textContent = "Link copied"; setTimeout(function () { button.textContent = "Copy link"; }, 2000); };
      if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(location.href).then(done, done);
      else { window.prompt("Copy this link:", location.href); }
    });

    // channel picker: changes apply at once
    var form = document.getElementById("channel-form");
    form.addEventListener("change", function (ev) {
      var box = ev.target;
      if (box.name !== "c") return;
      var id = Number(box.value);
      if (box.checked) {
        state.channels.push({ id: id, name: box.dataset.name, units: box.dataset.units, instrument: box.dataset.instrument,
          instrumentSlug: box.dataset.instrumentSlug, slug: box.dataset.slug, lastTs: box.dataset.lastTs ? Number(box.dataset.lastTs) : null,
          firstTs: null });
        rememberRecent(id);
      } else {
        state.channels = state.channels.filter(function (c) { return c.id !== id; });
      }
      if (state.range === "all") {
        // the extent of the new set is known by the server: reload the page for it
        writeState(state, true);
        location.reload();
        return;
      }
      plot.state = state;
      reload(true);
    });
    form.addEventListener("submit", function (ev) { ev.preventDefault(); });
    // The picker searches on the server as one types (never every channel in the page): the recently
    // used channels (kept in this browser) and the current instrument's come first.
    var filter = document.getElementById("channel-filter");
    var results = document.getElementById("channel-results"), resultsTitle = document.getElementById("channel-results-title");
    var searchTimer = null, searchSeq = 0;
    function recentIds() {
      try { return JSON.parse(localStorage.getItem(RECENT_KEY) || "[]").filter(function (v) { return typeof v === "number"; }); }
      catch (e) { return []; }
    }
    function rememberRecent(id) {
      var ids = [id].concat(recentIds().filter(function (v) { return v !== id; })).slice(0, 20);
      try { localStorage.setItem(RECENT_KEY, JSON.stringify(ids)); } catch (e) { /* private mode: no memory */ }
    }
    function choice(c) {
      var label = document.createElement("label"), box = document.createElement("input");
      label.className = "checkbox";
      box.type = "checkbox"; box.name = "c"; box.value = c.id;
      box.checked = state.channels.some(function (s) { return s.id === c.id; });
      box.dataset.name = c.name; box.dataset.slug = c.slug; box.dataset.units = c.units || "";
      box.dataset.instrument = c.instrument; box.dataset.instrumentSlug = c.instrumentSlug;
      box.dataset.lastTs = c.lastTs == null ? "" : String(c.lastTs);
      var name = document.createElement("span"); name.textContent = c.name;
      label.appendChild(box); label.appendChild(name);
      if (c.units) { var units = document.createElement("span"); units.className = "units"; units.textContent = c.units; label.appendChild(units); }
      var where = document.createElement("span"); where.className = "muted small"; where.textContent = " · " + c.instrument;
      label.appendChild(where);
      return label;
    }
    function search() {
      var term = filter.value.trim(), seq = ++searchSeq;
      var q = new URLSearchParams({ q: term, instrument: config.instrument || "", recent: recentIds().join(",") });
      results.setAttribute("aria-busy", "true");
      return fetch(config.searchUrl + "?" + q.toString(), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (answer) {
          if (seq !== searchSeq) return;  // a later keystroke's answer wins
          results.querySelectorAll("label, p").forEach(function (node) { node.remove(); });
          results.removeAttribute("aria-busy");
          if (!answer.ok) { resultsTitle.textContent = answer.body.detail || "The search failed."; return; }
          resultsTitle.textContent = term ? "Matching “" + term + "”" : "Recent and this instrument's";
          answer.body.results.forEach(function (c) { results.appendChild(choice(c)); });
          var note = document.createElement("p"); note.className = "muted small"; note.id = "channel-hint";
          if (!answer.body.results.length) note.textContent = "No channel matches.";
          else if (answer.body.more) note.textContent = "The first " + answer.body.results.length + " shown: type more to narrow.";
          if (note.textContent) results.appendChild(note);
        })
        .catch(function () { if (seq === searchSeq) { results.removeAttribute("aria-busy"); resultsTitle.textContent = "The search failed."; } });
    }
    filter.addEventListener("input", function () {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(search, 150);
    });
    filter.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { ev.preventDefault(); clearTimeout(searchTimer); search(); } });
    if (!config.instrument && recentIds().length) search();
    if (window.matchMedia("(max-width: 960px)").matches && state.channels.length) {
      document.getElementById("channel-picker").open = false;
    }

    // save to dashboard: post the current view
    var saveForm = document.getElementById("save-form"), target = document.getElementById("save-target");
    var newTitle = document.getElementById("save-new-title");
    function syncTarget() {
      var creating = target.value.indexOf("/new/") >= 0;
      newTitle.style.display = creating ? "" : "none";
      document.getElementById("save-title").required = creating;
    }
    target.addEventListener("change", syncTarget);
    syncTarget();
    saveForm.addEventListener("submit", function (ev) {
      if (!state.channels.length) { ev.preventDefault(); alert("Choose channels to plot first."); return; }
      saveForm.action = target.value;
      var hidden = document.getElementById("save-hidden");
      hidden.innerHTML = "";
      function add(name, value) {
        var input = document.createElement("input");
        input.type = "hidden"; input.name = name; input.value = value; hidden.appendChild(input);
      }
      state.channels.forEach(function (c) { add("channels", c.id); });
      add("time_range", state.range);
      if (state.range === "custom") { add("start", localInput(state.start)); add("end", localInput(state.end)); }
      if (state.flagged) add("include_flagged", "on");
      // the view, y axes (by unit: a dashboard numbers its axes from its own channel order) and expressions
      var units = plot.axes(), axes = [];
      Object.keys(state.yaxes || {}).forEach(function (k) {
        var a = state.yaxes[k];
        if (units[k - 1] !== undefined) axes.push({ units: units[k - 1], log: !!a.log, min: a.min, max: a.max, unit: a.unit || null });
      });
      var options = { view: state.kind || "series", axes: axes, exprs: state.exprs || [] };
      if (state.kind === "heatmap" && state.channels.length > 1) options.heat = plot.heatChannel().id;
      add("options", JSON.stringify(options));
      var panelTitle = document.getElementById("save-panel-title").value;
      if (target.value.indexOf("/new/") >= 0) {
        add("panel_title", panelTitle);
      } else {
        add("title", panelTitle);
      }
    });

    // "the time of run N": the server turns ?run=list/N into this view over the run's start and end
    var goToRun = document.getElementById("go-to-run");
    if (goToRun) goToRun.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var list = document.getElementById("run-list").value, label = document.getElementById("run-label").value.trim();
      if (!list || !label) return;
      writeState(state);
      var q = new URLSearchParams(location.search);
      q.set("run", list + "/" + label);
      location.href = location.pathname + "?" + q.toString().replace(/%2C/g, ",").replace(/%2F/g, "/");
    });

    window.addEventListener("popstate", function () { location.reload(); });
    syncControls();
    plot.load("state").then(function () {
      syncControls();
      if (state.live) plot.setLive(true);
    });
  }

  // --- dashboards ---------------------------------------------------------------------------------

  function dashboard(config) {
    setZone(config.timeZone);
    document.querySelectorAll(".daq-panel[data-state]").forEach(function (root) {
      var state = JSON.parse(document.getElementById(root.dataset.state).textContent);
      if (state.range === "custom") { state.start = Date.parse(state.start); state.end = Date.parse(state.end); }
      if (state.range === "since") { state.start = Date.parse(state.start); } // following the active run
      // the panel's saved view (and histogram over time's channel), y axes (numbered by the server as the plot
      // numbers them) and expressions
      state.kind = KINDS.indexOf(state.kind) >= 0 ? state.kind : "series";
      state.yaxes = state.yaxes || {}; state.exprs = state.exprs || [];
      var plot = new Plot(root, { state: state, samplesUrl: config.samplesUrl, runsUrl: config.runsUrl,
        histogramUrl: config.histogramUrl, expressionUrl: config.expressionUrl, liveSeconds: 15 });
      plot.load("state");
      if (state.range !== "custom") plot.setLive(true);
      var form = document.querySelector('form.panel-options[data-state="' + root.dataset.state + '"]');
      if (form) editInPlace(form, plot, root.closest("section"));
    });
  }

  // A panel's "Options" menu (for whoever may change the dashboard): the server checks and saves them, and
  // answers the panel's new options; the panel is drawn again with them, the rest of the page untouched.
  function editInPlace(form, plot, card) {
    var error = form.querySelector(".panel-options-error"), button = form.querySelector("button[type=submit]");
    var view = form.querySelector("[name=view]"), heat = form.querySelector(".heat-choice");
    function syncHeat() { if (heat) heat.hidden = view.value !== "heatmap"; }
    view.addEventListener("change", syncHeat);
    syncHeat();
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      error.textContent = "";
      button.disabled = true;
      fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin",
        headers: { Accept: "application/json" } })
        .then(function (response) {
          return response.json().catch(function () { return { detail: "The server answered " + response.status + "." }; })
            .then(function (body) { return { ok: response.ok, body: body }; });
        })
        .then(function (answer) {
          button.disabled = false;
          if (!answer.ok) { error.textContent = answer.body.detail || "The options were not saved."; return; }
          var o = answer.body.options;
          plot.state.kind = o.kind; plot.state.heat = o.heat || null; plot.state.yaxes = o.yaxes || {};
          plot.state.exprs = o.exprs || [];
          card.querySelector(".panel-view").textContent = answer.body.view_words ? " · " + answer.body.view_words : "";
          card.querySelector(".panel-open").href = answer.body.plot_url;
          form.closest("details").open = false;
          plot.view = null;
          plot.load("options");
        })
        .catch(function (e) { button.disabled = false; error.textContent = "The options were not saved: " + e.message; });
    });
  }

  window.DAQPlot = { page: page, dashboard: dashboard, Plot: Plot, instances: Plot.instances,
    zone: function () { return zone.name; }, wall: wall, unwall: unwall };

  // Started from the page's JSON configuration (json_script), not an inline script: see docs/security.md.
  function configOf(id) {
    var element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }
  var pageConfig = configOf("plot-config"), dashboardConfig = configOf("dashboard-config");
  if (pageConfig) page(pageConfig);
  if (dashboardConfig) dashboard(dashboardConfig);
})();
