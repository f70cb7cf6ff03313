// The implant review page's wiring: list the processed radiographs, show one with the AI's
// numbered boxes, let the dentist drop, draw and name implants, post the review.
// Its logic is in implants_logic.js and correct_logic.js (tested with node: tests/js/).
(function () {
  "use strict";
  const L = window.CorrectLogic;
  const R = window.ImplantLogic;
  const $ = (id) => document.getElementById(id);
  const img = $("image");
  const canvas = $("marks");
  let shown = null; // {sop, rows, columns} of the radiograph on screen
  let state = null; // R.initialState(...) of it, as the dentist changed it
  let undoStack = [];
  let pressed = null;
  let shownUrl = null;
  let request = 0; // the newest radiograph asked for; replies to older ones are dropped

  const { status, headers, problem, guarded } = window.PageCommon;
  const P = window.PageCommon;
  P.restoreToken();

  async function listRecent() {
    await P.listRecent("radiograph", shown && shown.sop);
  }

  function draw() {
    canvas.width = img.naturalWidth || 1;
    canvas.height = img.naturalHeight || 1;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (!state) return;
    const line = Math.max(2, canvas.width / 300);
    g.font = `${Math.max(12, Math.round(canvas.width / 40))}px sans-serif`;
    g.textBaseline = "bottom";
    const box = (b, colour, dashed, label) => {
      g.setLineDash(dashed ? [line * 3, line * 2] : []);
      g.strokeStyle = colour;
      g.lineWidth = line;
      g.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
      g.fillStyle = colour;
      g.fillText(label, b[0] + line, Math.max(g.measureText(label).actualAscent || 12, b[1] - line));
    };
    state.ai.forEach((a) => box(a.box, a.kept ? "#ffd700" : "#a0a0a0", !a.kept, a.kept ? `#${a.finding}` : `#${a.finding} ✕`));
    state.drawn.forEach((d, i) => box(d.box, "#00d0ff", false, `D${i + 1}`));
  }

  function remember() {
    undoStack.push(R.copyState(state));
    if (undoStack.length > 200) undoStack.shift();
  }

  function changed() {
    draw();
    renderList();
  }

  function undo() {
    const earlier = undoStack.pop();
    if (!earlier) return;
    state = earlier;
    changed();
  }

  // The list beside the image: each implant, whether it is kept, and a system to type.
  function renderList() {
    const list = $("implants");
    list.replaceChildren();
    $("summary").textContent = state ? R.summaryLine(state) : "";
    if (!state) return;
    const systemField = (item, title) => {
      const field = document.createElement("input");
      field.type = "text";
      field.maxLength = 64;
      field.placeholder = "system (optional)";
      field.setAttribute("list", "known-systems"); // the identifier's catalogue as suggestions; any name is taken
      field.title = title;
      field.value = item.system;
      field.addEventListener("change", () => { item.system = field.value; });
      return field;
    };
    state.ai.forEach((a, index) => {
      const li = document.createElement("li");
      const keep = document.createElement("input");
      keep.type = "checkbox";
      keep.checked = a.kept;
      keep.title = "keep this finding";
      keep.addEventListener("change", () => { remember(); state.ai[index].kept = keep.checked; changed(); });
      const text = document.createElement("span");
      text.textContent = ` #${a.finding} AI ${a.score.toFixed(2)} · ${R.systemText(a.top, false)} `;
      if (!a.kept) text.className = "dropped";
      li.append(keep, text, systemField(a, `system of AI finding #${a.finding}`));
      list.append(li);
    });
    state.drawn.forEach((d, index) => {
      const li = document.createElement("li");
      const text = document.createElement("span");
      text.textContent = `D${index + 1} drawn `;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "remove";
      remove.addEventListener("click", () => { remember(); state.drawn.splice(index, 1); changed(); });
      li.append(text, systemField(d, `system of drawn implant ${index + 1}`), remove);
      list.append(li);
    });
  }

  async function load(sop) {
    const mine = ++request;
    status("loading…");
    const [found, about, picture] = await Promise.all([
      fetch(`/instances/${encodeURIComponent(sop)}/implants`, { headers: headers() }),
      fetch(`/instances/${encodeURIComponent(sop)}`, { headers: headers() }),
      fetch(`/instances/${encodeURIComponent(sop)}/frames/0?masks=none&format=auto`, { headers: headers() })]);
    for (const response of [found, about, picture]) {
      if (!response.ok) {
        if (mine === request) status(await problem(response), true);
        return;
      }
    }
    const [findings, item, blob] = [await found.json(), await about.json(), await picture.blob()];
    if (mine !== request) return; // another radiograph was picked meanwhile
    shown = { sop, rows: findings.rows, columns: findings.columns };
    state = R.initialState(findings.implants);
    findings.implants.forEach((a, i) => { state.ai[i].score = a.score; state.ai[i].top = a.system_top; });
    undoStack = [];
    $("patient").textContent = L.patientLine(item);
    const last = findings.latest_review;
    $("previous").textContent = last
      ? `Reviewed before${last.operator ? ` by ${L.personName(last.operator)}` : ""}: ${last.description}` : "";
    $("result").textContent = "";
    history.replaceState(null, "", L.hashFor(sop, 0));
    if (shownUrl) URL.revokeObjectURL(shownUrl);
    shownUrl = URL.createObjectURL(blob);
    img.onload = changed;
    img.src = shownUrl;
    const catalogue = document.getElementById("known-systems");
    catalogue.replaceChildren(...(findings.systems || []).map((name) => {
      const option = document.createElement("option");
      option.value = name;
      return option;
    }));
    status(`${findings.implants.length} implant(s) found by ${findings.algorithm}`);
  }

  function point(event) {
    const rect = img.getBoundingClientRect();
    return L.imagePoint(event.clientX, event.clientY, rect, img.naturalWidth, img.naturalHeight);
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (!img.naturalWidth || !state) return;
    pressed = point(event);
  });
  canvas.addEventListener("pointerup", (event) => {
    if (!pressed) return;
    const released = point(event);
    const start = pressed;
    pressed = null;
    if (L.isDrag(start, released)) {
      if (!R.roomToDraw(state)) {
        status(`a review lists at most ${R.MAX_IMPLANTS} implants: drop one before drawing another`, true);
        return;
      }
      remember();
      state.drawn.push({ box: L.boxFrom(start, released), system: "" });
    } else {
      const target = R.hit(state, released);
      if (!target) return;
      remember();
      if (target.kind === "ai") state.ai[target.index].kept = !state.ai[target.index].kept;
      else state.drawn.splice(target.index, 1);
    }
    changed();
  });

  async function send() {
    let body;
    try {
      if (!shown) throw new Error("pick a processed radiograph first");
      body = R.reviewBody(shown.sop, state);
    } catch (e) {
      status(e.message, true);
      return;
    }
    const target = shown.sop;
    $("send").disabled = true; // one review at a time from this page
    let reply = null;
    try {
      status("sending the review…");
      const response = await fetch("/corrections/implants?wait=60", {
        method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
      });
      if (response.status === 202) {
        const accepted = await response.json();
        const job = await P.follow(accepted.correction_job, "review");
        if (!job) return;
        reply = job.result && job.result.implant_review;
      } else if (!response.ok) {
        status(await problem(response), true);
        return;
      } else {
        reply = await response.json();
      }
    } finally {
      $("send").disabled = false;
    }
    if (!reply) return;
    const lines = R.resultLines(reply).join("\n");
    if (shown && shown.sop === target) $("result").textContent = lines;
    status(`review sent: corrected report, boxes, segmentation and capture made; they go to the destinations `
      + `that receive radiograph results${shown && shown.sop === target ? "" : ` (radiograph ${target})`}`);
    await listRecent(); // its count of reviews changed
  }

  const linked = L.parseHash(window.location.hash);
  $("token").addEventListener("change", guarded(async () => {
    P.keepToken();
    await P.signIn();
    await listRecent();
    if (linked && !shown) await load(linked.sop);
  }));
  $("refresh").addEventListener("click", guarded(listRecent));
  $("recent").addEventListener("change", guarded(async () => {
    if ($("recent").value) await load($("recent").value);
  }));
  $("send").addEventListener("click", guarded(send));
  $("undo").addEventListener("click", undo);
  $("reset").addEventListener("click", () => {
    if (!state) return;
    remember();
    state.ai.forEach((a) => { a.kept = true; a.system = ""; });
    state.drawn = [];
    changed();
  });
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) && event.target.type !== "checkbox";
    if (!typing && (event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    }
  });

  if (P.token()) {
    guarded(async () => {
      await P.signIn();
      await listRecent();
      if (linked) await load(linked.sop);
    })();
  }
})();
