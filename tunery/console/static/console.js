/* tunery console: live progress, live charts and streamed answers. No framework, no build step. */
"use strict";
const tunery = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const short = (s) => (s || "").replace("TUNING_JOB_STATE_", "").replace("JOB_STATE_", "").replaceAll("_", " ").toLowerCase();
  const time = (t) => (t || "").slice(0, 19).replace("T", " ");

  function setProgress(el, job) {
    if (!el) return;
    el.dataset.steps = job.steps;
    el.dataset.total = job.total_steps;
    el.querySelector(".fill").style.width = job.percent + "%";
    el.querySelector(".label").textContent =
      `${job.steps} / ${job.total_steps || "?"} steps · epoch ${job.epoch}` + (job.epochs ? ` / ${job.epochs}` : "");
  }

  // {"error": "words"} from the console, {"error": {"message"}} from the app's own error handler
  const errorOf = async (r) => {
    const body = await r.json().catch(() => ({}));
    return (typeof body.error === "string" ? body.error : body.error && body.error.message) || r.statusText;
  };

  async function getJSON(url) {
    const r = await fetch(url, {credentials: "same-origin"});
    if (!r.ok) throw new Error(await errorOf(r));
    return r.json();
  }

  // Jobs list: poll while any job is still going; a job that appears or disappears reloads the page.
  function watchJobs() {
    const table = document.getElementById("jobs");
    const state = table ? table.dataset.state : "";
    const tick = async () => {
      let data;
      try { data = await getJSON("/console/api/jobs" + (state ? "?state=" + encodeURIComponent(state) : "")); }
      catch (e) { return setTimeout(tick, 3000); }
      const shown = [...document.querySelectorAll("tr[data-job]")].map((r) => r.dataset.job);
      if (data.jobs.map((j) => j.id).join() !== shown.join()) return location.reload();
      let running = false;
      for (const job of data.jobs) {
        const row = document.getElementById("job-" + job.id);
        const was = row.dataset.state;
        row.dataset.state = job.state;
        row.querySelector('[data-field="state"]').textContent = job.state_short;
        row.querySelector('[data-field="state"]').className = "badge " + job.state_short.replaceAll(" ", "-");
        row.querySelector('[data-field="detail"]').textContent = job.detail;
        row.querySelector('[data-field="start_time"]').textContent = time(job.start_time);
        row.querySelector('[data-field="end_time"]').textContent = time(job.end_time);
        setProgress(row.querySelector(".progress"), job);
        if (!job.cancellable) { const f = row.querySelector("form.cancel"); if (f) f.remove(); }
        running = running || !job.ended;
        if (was !== job.state && job.ended) running = true;  // one more tick after the end
      }
      setTimeout(tick, running ? 500 : 5000);
    };
    setTimeout(tick, 500);
  }

  // Job detail: charts of the Vertex curves, refreshed with the progress until the job ends.
  const CHARTS = {
    "chart-loss": ["Loss", "/train_total_loss", "/eval_total_loss"],
    "chart-accuracy": ["Next-token accuracy", "/train_fraction_of_correct_next_step_preds", "/eval_fraction_of_correct_next_step_preds"],
    "chart-reward": ["Reward accuracy (the preferred answer gained more)", "/train_reward_accuracy", "/eval_reward_accuracy"],
  };
  function chartData(curves, train, evaluation) {
    const t = curves[train] || [], e = curves[evaluation] || [];
    const steps = [...new Set([...t.map((p) => p[0]), ...e.map((p) => p[0])])].sort((a, b) => a - b);
    const tm = new Map(t), em = new Map(e);
    return [steps, steps.map((s) => tm.get(s) ?? null), steps.map((s) => em.get(s) ?? null)];
  }
  function makeCharts(curves) {
    const charts = {};
    for (const [id, [title, train, evaluation]] of Object.entries(CHARTS)) {
      const el = document.getElementById(id);
      if (!el) continue;
      const y = id === "chart-loss" ? {} : {range: [0, 1]};  // a fraction
      const opts = {title, width: Math.max(300, el.clientWidth || 520), height: 220, scales: {x: {time: false}, y},
        axes: [{label: "step"}, {}],
        series: [{label: "step"}, {label: train, stroke: "#2563eb", width: 2, spanGaps: true},
                 {label: evaluation, stroke: "#dc2626", width: 2, spanGaps: true, points: {show: true}}]};
      charts[id] = new uPlot(opts, chartData(curves, train, evaluation), el);
      el.dataset.points = (curves[train] || []).length;
      el.dataset.evalPoints = (curves[evaluation] || []).length;
    }
    return charts;
  }
  function renderTimeline(stages) {
    const list = document.getElementById("timeline");
    list.replaceChildren(...stages.map((s) => {
      const li = document.createElement("li");
      li.className = (s.reached ? "reached " : "") + (s.current ? "current" : "");
      const b = document.createElement("b");
      b.textContent = s.name;
      li.append(b);
      if (s.time) { const t = document.createElement("small"); t.textContent = time(s.time); li.append(document.createElement("br"), t); }
      return li;
    }));
  }
  function watchJob(id, curves) {
    const charts = makeCharts(curves);
    const box = document.getElementById("job");
    if (box.dataset.ended === "true") return;
    const tick = async () => {
      let data;
      try { data = await getJSON("/console/api/jobs/" + id); } catch (e) { return setTimeout(tick, 3000); }
      const job = data.job;
      setProgress(box.querySelector(".progress"), job);
      const badge = document.getElementById("state");
      badge.textContent = job.state_short;
      badge.className = "badge " + job.state_short.replaceAll(" ", "-");
      document.getElementById("detail").textContent = job.detail;
      renderTimeline(data.timeline);
      for (const [cid, [, train, evaluation]] of Object.entries(CHARTS)) {
        if (!charts[cid]) continue;
        charts[cid].setData(chartData(data.curves, train, evaluation));
        document.getElementById(cid).dataset.points = (data.curves[train] || []).length;
        document.getElementById(cid).dataset.evalPoints = (data.curves[evaluation] || []).length;
      }
      if (job.ended) return setTimeout(() => location.reload(), 300);  // checkpoints, model, evaluation
      setTimeout(tick, 500);
    };
    setTimeout(tick, 500);
  }

  // Playground: each pane streams its model's answer (Vertex SSE chunks) as it is generated.
  async function stream(side, body) {
    const answer = document.getElementById("answer-" + side), pane = document.getElementById("pane-" + side);
    const error = document.getElementById("error-" + side), usage = document.getElementById("usage-" + side);
    answer.textContent = ""; usage.textContent = ""; error.hidden = true; pane.dataset.chunks = "0";
    pane.dataset.done = "false";
    const fail = (text) => { error.textContent = text; error.hidden = false; pane.dataset.done = "error"; };
    let r;
    try {
      r = await fetch("/console/api/generate", {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()}, body: JSON.stringify(body)});
    } catch (e) { return fail("the server did not answer: " + e.message); }
    if (!r.ok) return fail(await errorOf(r));
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = "", finished = false;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        const chunk = JSON.parse(line);
        if (chunk.error) return fail(chunk.error.message);
        const cand = (chunk.candidates || [])[0];
        const text = cand && cand.content.parts.map((p) => p.text || "").join("");
        if (text) { answer.textContent += text; pane.dataset.chunks = String(Number(pane.dataset.chunks) + 1); }
        if (chunk.usageMetadata) {
          const u = chunk.usageMetadata;
          usage.textContent = `${u.promptTokenCount} prompt tokens · ${u.candidatesTokenCount} output tokens · ` +
            `${u.totalTokenCount} total · ${cand.finishReason}`;
          usage.dataset.output = u.candidatesTokenCount;
          finished = true;
        }
      }
    }
    if (!finished) return fail("the answer stopped before it was complete (see the server's log)");
    pane.dataset.done = "true";
  }
  function playground() {
    const inline = (file) => new Promise((resolve, reject) => {  // {mimeType, data (base64)} of a chosen file
      const reader = new FileReader();
      reader.onload = () => resolve({mimeType: file.type, data: String(reader.result).split(",", 2)[1] || ""});
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
    document.getElementById("playground").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = ev.target;
      const common = {prompt: f.prompt.value, system: f.system.value, temperature: f.temperature.value,
                      maxOutputTokens: f.maxOutputTokens.value};
      if (f.image.files.length) common.image = await inline(f.image.files[0]);
      for (const side of ["left", "right"]) {
        const target = document.getElementById("model-" + side).value;
        if (target) stream(side, {...common, target});
      }
    });
  }

  return {watchJobs, watchJob, playground};
})();
