// The implant review page's logic, apart from the page so that it can be tested (tests/js/):
// which AI box a click toggles, the request a review becomes, and how its reply reads.
// Boxes are [x0, y0, x1, y1] in the radiograph's pixels, x to the right and y down.
(function (root) {
  "use strict";

  // printable ASCII without backslash, no space at either end, 1 to 64 characters, as the API takes
  const SYSTEM_NAME = /^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,62}[\x21-\x5b\x5d-\x7e])?$/;

  // The most implants one review may list (the API's MAX_IMPLANTS).
  const MAX_IMPLANTS = 64;

  function listed(state) {
    return state.ai.filter((a) => a.kept).length + state.drawn.length;
  }

  // Whether one more box may be drawn.
  function roomToDraw(state) {
    return listed(state) < MAX_IMPLANTS;
  }

  // The review before the dentist changes anything: every AI finding kept, none drawn.
  // `implants`: GET /instances/{sop}/implants's "implants".
  function initialState(implants) {
    return {
      ai: implants.map((item) => ({ finding: item.finding, box: item.box_xyxy.slice(0, 4), kept: true, system: "" })),
      drawn: [],
    };
  }

  function copyState(state) {
    return { ai: state.ai.map((a) => Object.assign({}, a)), drawn: state.drawn.map((d) => Object.assign({}, d)) };
  }

  function inside(point, box) {
    return point[0] >= box[0] && point[0] <= box[2] && point[1] >= box[1] && point[1] <= box[3];
  }

  function area(box) {
    return (box[2] - box[0]) * (box[3] - box[1]);
  }

  // What a click at `point` lands on: {kind: "ai" or "drawn", index} of the smallest box
  // (AI or drawn) holding it, else null.
  function hit(state, point) {
    let best = null;
    for (const kind of ["ai", "drawn"]) {
      state[kind].forEach((item, index) => {
        if (inside(point, item.box) && (best === null || area(item.box) < area(state[best.kind][best.index].box))) {
          best = { kind, index };
        }
      });
    }
    return best;
  }

  function systemOf(text, what) {
    const value = String(text || "").trim();
    if (!value) return null;
    if (!SYSTEM_NAME.test(value)) {
      throw new Error(`${what}: a system name has 1 to 64 printable ASCII characters, no backslash`);
    }
    return value;
  }

  // The body of POST /corrections/implants: the AI findings kept (with a system the
  // dentist typed), then the boxes drawn.
  function reviewBody(sop, state) {
    if (!/^[0-9]+(\.[0-9]+)*$/.test(String(sop || "")) || String(sop).length > 64) {
      throw new Error("pick a processed radiograph first");
    }
    if (listed(state) > MAX_IMPLANTS) {
      throw new Error(`a review lists at most ${MAX_IMPLANTS} implants (${listed(state)} now): drop some`);
    }
    const implants = [];
    for (const item of state.ai) {
      if (!item.kept) continue;
      const entry = { finding: item.finding };
      const system = systemOf(item.system, `AI finding #${item.finding}`);
      if (system) entry.system = system;
      implants.push(entry);
    }
    state.drawn.forEach((item, index) => {
      const entry = { box: item.box.map((v) => Math.round(v * 10) / 10) };
      const system = systemOf(item.system, `drawn implant ${index + 1}`);
      if (system) entry.system = system;
      implants.push(entry);
    });
    return { sop_instance_uid: String(sop), implants };
  }

  // One line for the state on screen, above the "Send review" button.
  function summaryLine(state) {
    const kept = state.ai.filter((a) => a.kept).length;
    const line = `${kept} of ${state.ai.length} AI finding(s) kept, ${state.drawn.length} drawn`;
    return kept + state.drawn.length === 0 ? `${line}: the review will say there is no implant` : line;
  }

  // A system candidate as the API gives it ([name, probability or null]).
  function systemText(top, byPerson) {
    if (!top || !top.length) return "system unknown";
    const [name, p] = top[0];
    return byPerson || p === null || p === undefined ? `${name} (named)` : `${name} (p=${Number(p).toFixed(2)})`;
  }

  // The reply of POST /corrections/implants, one line per implant of the corrected report.
  function resultLines(reply) {
    return reply.implants.map((item, index) => {
      const how = item.origin === "person" ? "drawn" : `AI, certainty ${Number(item.score).toFixed(2)}`;
      return `Implant ${index + 1} (${how}): ${systemText(item.system_top, item.system_by_person)}`;
    });
  }

  const api = { MAX_IMPLANTS, initialState, copyState, hit, roomToDraw, reviewBody, summaryLine, systemText,
    resultLines };
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api;
  } else {
    root.ImplantLogic = api;
  }
})(this);
