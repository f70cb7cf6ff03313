// Tests of the implant review page's logic (dicom_service/api/static/implants_logic.js), run
// by tests/unit/test_correction_page.py with `node --test`.
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const R = require(path.join(__dirname, "..", "..", "dicom_service", "api", "static", "implants_logic.js"));

const AI = [
  { finding: 1, box_xyxy: [10, 10, 100, 200], score: 0.9, system_top: [["Alpha", 0.8]] },
  { finding: 2, box_xyxy: [40, 50, 60, 90], score: 0.5, system_top: [] }, // inside the first
];

test("a click lands on the smallest box under it, AI or drawn, else on nothing", () => {
  const state = R.initialState(AI);
  assert.deepEqual(state.ai.map((a) => [a.finding, a.kept]), [[1, true], [2, true]]);
  assert.deepEqual(R.hit(state, [50, 60]), { kind: "ai", index: 1 }); // both hold it: the smaller
  assert.deepEqual(R.hit(state, [15, 15]), { kind: "ai", index: 0 });
  state.drawn.push({ box: [300, 300, 350, 400], system: "" });
  assert.deepEqual(R.hit(state, [310, 320]), { kind: "drawn", index: 0 });
  state.drawn.push({ box: [12, 100, 30, 150], system: "" }); // drawn inside AI box 1
  assert.deepEqual(R.hit(state, [20, 120]), { kind: "drawn", index: 1 });
  assert.equal(R.hit(state, [5, 5]), null);
  assert.deepEqual(R.hit(state, [100, 200]), { kind: "ai", index: 0 }); // edges belong to the box
});

test("the review body lists the kept findings with typed systems, then the drawn boxes", () => {
  const state = R.initialState(AI);
  state.ai[0].system = "  Straumann BLT ";
  state.ai[1].kept = false;
  state.drawn.push({ box: [1.234, 2, 30.06, 40], system: "" });
  assert.deepEqual(R.reviewBody("1.2.3", state), {
    sop_instance_uid: "1.2.3",
    implants: [{ finding: 1, system: "Straumann BLT" }, { box: [1.2, 2, 30.1, 40] }],
  });
  assert.match(R.summaryLine(state), /^1 of 2 AI finding\(s\) kept, 1 drawn$/);
  const none = R.initialState(AI);
  none.ai.forEach((a) => { a.kept = false; });
  assert.deepEqual(R.reviewBody("1.2.3", none).implants, []);
  assert.match(R.summaryLine(none), /there is no implant/);
  state.drawn[0].system = " Nobel ";
  assert.deepEqual(R.reviewBody("1.2.3", state).implants[1].system, "Nobel"); // the page trims
  state.drawn[0].system = "Zürich";
  assert.throws(() => R.reviewBody("1.2.3", state), /drawn implant 1: a system name has 1 to 64 printable ASCII/);
  state.drawn[0].system = "A\\B";
  assert.throws(() => R.reviewBody("1.2.3", state), /printable ASCII/);
  assert.throws(() => R.reviewBody("", state), /pick a processed radiograph/);
});

test("a review stops at 64 implants, as the API does", () => {
  const state = R.initialState(AI);
  while (R.roomToDraw(state)) state.drawn.push({ box: [1, 1, 5, 5], system: "" });
  assert.equal(state.drawn.length + 2, R.MAX_IMPLANTS); // the two kept AI findings count
  assert.equal(R.reviewBody("1.2.3", state).implants.length, 64);
  state.drawn.push({ box: [1, 1, 5, 5], system: "" }); // e.g. a finding kept again after drawing
  assert.throws(() => R.reviewBody("1.2.3", state), /at most 64 implants \(65 now\)/);
  state.ai[0].kept = false;
  assert.equal(R.reviewBody("1.2.3", state).implants.length, 64);
});

test("undo copies do not share their boxes' entries with the state", () => {
  const state = R.initialState(AI);
  const copy = R.copyState(state);
  state.ai[0].kept = false;
  state.drawn.push({ box: [0, 0, 9, 9], system: "" });
  assert.equal(copy.ai[0].kept, true);
  assert.equal(copy.drawn.length, 0);
});

test("the reply reads as one line per implant", () => {
  const reply = { implants: [
    { origin: "ai", score: 0.91, system_top: [["Straumann BLT", null]], system_by_person: true },
    { origin: "person", score: null, system_top: [["Synthetic Gamma", 0.996], ["Other", 0.003]],
      system_by_person: false },
    { origin: "person", score: null, system_top: [], system_by_person: false },
  ] };
  assert.deepEqual(R.resultLines(reply), [
    "Implant 1 (AI, certainty 0.91): Straumann BLT (named)",
    "Implant 2 (drawn): Synthetic Gamma (p=1.00)",
    "Implant 3 (drawn): system unknown",
  ]);
});
