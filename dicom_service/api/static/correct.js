// The correction page's wiring: fetch frames with the token, collect clicks and a box
// on the canvas, post the correction, follow its job, show the amended mask.
// The logic it relies on is in correct_logic.js (tested with node: tests/js/).
(function () {
  "use strict";
  const L = window.CorrectLogic;
  const $ = (id) => document.getElementById(id);
  const img = $("frame");
  const canvas = $("marks");
  const prompts = { points: [], labels: [], box: null };
  let pressed = null;
  let shownUrl = null;
  let request = 0; // the newest frame request; replies to older ones are dropped
  let shown = null; // {sop, frame} of the image on screen: the prompts belong to it
  let frameCount = null;
  let undoStack = []; // earlier states of `prompts` on the frame on screen, the newest last

  const { status, headers, problem, guarded } = window.PageCommon;
  const P = window.PageCommon;
  P.restoreToken();

  function draw() {
    canvas.width = img.naturalWidth || 1;
    canvas.height = img.naturalHeight || 1;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    const size = Math.max(2, canvas.width / 160);
    prompts.points.forEach((p, i) => {
      g.fillStyle = prompts.labels[i] ? "#1e90ff" : "#ff3030";
      g.beginPath();
      g.arc(p[0], p[1], size, 0, 2 * Math.PI);
      g.fill();
    });
    if (prompts.box) {
      const [x0, y0, x1, y1] = prompts.box;
      g.strokeStyle = "#ffd700";
      g.lineWidth = Math.max(1, size / 2);
      g.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
  }

  function snapshot() {
    return { points: prompts.points.map((p) => p.slice()), labels: prompts.labels.slice(),
      box: prompts.box ? prompts.box.slice() : null };
  }

  // Before each change of the prompts: what "Undo" (or Ctrl+Z) brings back.
  function remember() {
    undoStack.push(snapshot());
    if (undoStack.length > 200) undoStack.shift();
  }

  function undo() {
    const earlier = undoStack.pop();
    if (!earlier) return;
    Object.assign(prompts, earlier);
    draw();
  }

  // "Clear prompts" (undoable); a new frame or a sent correction starts afresh.
  function clearByUser() {
    if (prompts.points.length || prompts.box) remember();
    clearPrompts();
  }

  function clearPrompts() {
    prompts.points = [];
    prompts.labels = [];
    prompts.box = null;
    draw();
  }

  const signIn = P.signIn;

  // The processed photos and videos, newest first, into the "Processed" list.
  async function listRecent() {
    await P.listRecent("video", shown && shown.sop);
  }

  // Who the frame on screen belongs to; "" while unknown.
  async function patientOf(sop) {
    const response = await fetch(`/instances/${encodeURIComponent(sop)}`, { headers: headers() });
    if (!response.ok) return `Patient: unknown (${await problem(response)})`;
    return L.patientLine(await response.json());
  }

  async function load() {
    const sop = $("sop").value.trim();
    const frame = Number($("frameNumber").value);
    let url;
    try {
      url = L.frameUrl(sop, frame, $("masks").value);
    } catch (e) {
      status(e.message, true);
      return;
    }
    const mine = ++request;
    status("loading…");
    const newInstance = !shown || shown.sop !== sop;
    const [response, patient] = await Promise.all([fetch(url, { headers: headers() }),
      newInstance ? patientOf(sop) : Promise.resolve(null)]);
    const blob = response.ok ? await response.blob() : null;
    if (mine !== request) return; // a later frame was asked for meanwhile
    if (!response.ok) {
      status(await problem(response), true);
      return; // the frame on screen, its prompts and its patient line stay as they were
    }
    if (!shown || shown.sop !== sop || shown.frame !== frame) { // prompts belong to a frame
      clearPrompts();
      undoStack = [];
    }
    shown = { sop, frame };
    if (patient !== null) $("patient").textContent = patient;
    history.replaceState(null, "", L.hashFor(sop, frame)); // a link to this frame
    if (shownUrl) URL.revokeObjectURL(shownUrl);
    shownUrl = URL.createObjectURL(blob);
    img.onload = draw;
    img.src = shownUrl;
    const count = Number(response.headers.get("X-Frame-Count"));
    frameCount = count > 0 ? count : null;
    $("frameCount").textContent = frameCount ? `of ${frameCount} (0 to ${frameCount - 1})` : "";
    if (frameCount) $("frameNumber").max = frameCount - 1;
    $("frameSlider").max = frameCount ? frameCount - 1 : 0;
    $("frameSlider").value = frame;
    status(`frame ${frame}; masks shown: ${response.headers.get("X-Mask-Source")}`);
  }

  function point(event) {
    const rect = img.getBoundingClientRect();
    return L.imagePoint(event.clientX, event.clientY, rect, img.naturalWidth, img.naturalHeight);
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (!img.naturalWidth) return;
    pressed = point(event);
  });
  canvas.addEventListener("pointerup", (event) => {
    if (!pressed) return;
    const released = point(event);
    remember();
    if (L.isDrag(pressed, released)) {
      prompts.box = L.boxFrom(pressed, released);
    } else {
      prompts.points.push(released);
      prompts.labels.push(event.shiftKey || $("negative").checked ? 0 : 1);
    }
    pressed = null;
    draw();
  });

  async function send() {
    let body;
    try {
      if (!shown) throw new Error("show a frame first");
      // the frame on screen, whatever the inputs say now: the clicks were made on it
      body = L.correctionBody(shown.sop, shown.frame, prompts,
        { radius: $("radius").value, restore: $("restore").checked });
    } catch (e) {
      status(e.message, true);
      return;
    }
    const target = { sop: shown.sop, frame: shown.frame };
    let made = false;
    $("send").disabled = true; // one correction at a time from this page
    try {
      status("correcting…");
      const response = await fetch("/corrections/tooth-masks?wait=30", {
        method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
      });
      if (response.status === 202) {
        const accepted = await response.json();
        if (!(await P.follow(accepted.correction_job, "correction"))) return;
      } else if (!response.ok) {
        status(await problem(response), true);
        return;
      }
      const done = "amended Segmentation made; it goes to the destinations that receive seg results";
      if (!shown || shown.sop !== target.sop || shown.frame !== target.frame) {
        // the dentist moved on meanwhile: keep what is on screen and its prompts
        status(`the correction of frame ${target.frame} of ${target.sop} is done: ${done}`);
      } else {
        clearPrompts();
        undoStack = [];
        $("sop").value = target.sop;
        $("frameNumber").value = target.frame;
        $("masks").value = "latest";
        await load();
        status(`${$("status").textContent}\n${done}`);
      }
      made = true;
    } finally {
      $("send").disabled = false; // before the list is read again: the correction is done
    }
    if (made) await listRecent(); // its count of corrections changed
  }

  // A link to a frame (#sop=…&frame=…) opens it: at once with the token of this tab's
  // session, else once the token is typed.
  const linked = L.parseHash(window.location.hash);

  $("token").addEventListener("change", guarded(async () => {
    P.keepToken();
    await signIn();
    await listRecent();
    if (linked && !shown) await load(); // a link opened before the token was typed
  }));
  $("refresh").addEventListener("click", guarded(listRecent));
  $("recent").addEventListener("change", guarded(async () => {
    if (!$("recent").value) return;
    $("sop").value = $("recent").value;
    $("frameNumber").value = 0;
    await load();
  }));
  $("load").addEventListener("click", guarded(load));
  $("send").addEventListener("click", guarded(send));
  $("clear").addEventListener("click", clearByUser);
  $("undo").addEventListener("click", undo);
  // the slider shows the number while it moves and loads the frame where it is let go
  $("frameSlider").addEventListener("input", () => { $("frameNumber").value = $("frameSlider").value; });
  $("frameSlider").addEventListener("change", guarded(load));
  // ← and → step through the frames, Ctrl+Z (⌘Z) undoes the last prompt; not while typing
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName)
      && event.target.type !== "range" && event.target.type !== "checkbox";
    if (typing || event.altKey) return;
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    } else if (!event.ctrlKey && !event.metaKey && (event.key === "ArrowLeft" || event.key === "ArrowRight")) {
      event.preventDefault();
      $(event.key === "ArrowLeft" ? "prev" : "next").click();
    }
  });
  $("prev").addEventListener("click", guarded(async () => {
    $("frameNumber").value = Math.max(0, Number($("frameNumber").value) - 1);
    await load();
  }));
  $("next").addEventListener("click", guarded(async () => {
    const last = frameCount ? frameCount - 1 : Infinity;
    $("frameNumber").value = Math.min(last, Number($("frameNumber").value) + 1);
    await load();
  }));

  if (linked) {
    $("sop").value = linked.sop;
    $("frameNumber").value = linked.frame;
  }
  if ($("token").value.trim()) {
    guarded(async () => {
      await signIn();
      await listRecent();
      if (linked) await load();
    })();
  }
})();
