// Tests of the correction page's logic (dicom_service/api/static/correct_logic.js), run by
// tests/unit/test_correction_page.py with `node --test`.
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const L = require(path.join(__dirname, "..", "..", "dicom_service", "api", "static", "correct_logic.js"));

test("a click on a scaled image lands on the frame's pixels", () => {
  // a 640x480 frame drawn at 320x240 from (100, 50) on the page
  const rect = { left: 100, top: 50, width: 320, height: 240 };
  assert.deepEqual(L.imagePoint(100, 50, rect, 640, 480), [0, 0]);
  assert.deepEqual(L.imagePoint(260, 170, rect, 640, 480), [320, 240]);
  assert.deepEqual(L.imagePoint(420, 290, rect, 640, 480), [640, 480]);
  assert.deepEqual(L.imagePoint(100.33, 50, rect, 640, 480), [0.7, 0]);
  // a pointer just past the edge stays on the frame (the API refuses points off it)
  assert.deepEqual(L.imagePoint(90, 300, rect, 640, 480), [0, 480]);
  assert.throws(() => L.imagePoint(0, 0, { left: 0, top: 0, width: 0, height: 0 }, 640, 480), /not shown/);
});

test("a drag in any direction is a box with ordered corners; a short one is a click", () => {
  assert.deepEqual(L.boxFrom([70, 60], [10, 8]), [10, 8, 70, 60]);
  assert.deepEqual(L.boxFrom([10, 60], [70, 8]), [10, 8, 70, 60]);
  assert.equal(L.isDrag([10, 10], [12, 13]), false);
  assert.equal(L.isDrag([10, 10], [40, 12]), false); // a thin line is not a box
  assert.equal(L.isDrag([10, 10], [40, 40]), true);
});

test("the request body has the API's field names and types", () => {
  const clicks = { points: [[12.5, 30], [50, 40]], labels: [1, 0], box: null };
  assert.deepEqual(L.correctionBody("1.2.3", "4", clicks, { radius: "15" }), {
    sop_instance_uid: "1.2.3", frame: 4, points: [[12.5, 30], [50, 40]], labels: [1, 0], radius: 15,
  });
  const box = { points: [], labels: [], box: [10, 8, 70, 60] };
  assert.deepEqual(L.correctionBody("1.2.3", 0, box, { radius: "", restore: true }), {
    sop_instance_uid: "1.2.3", frame: 0, box: [10, 8, 70, 60], restore: true,
  });
  assert.deepEqual(L.correctionBody("1.2.3", 0, box, { basedOn: "1.2.9" }).based_on, "1.2.9");
});

test("what the API would refuse is refused before sending", () => {
  const box = { points: [], labels: [], box: [10, 8, 70, 60] };
  assert.throws(() => L.correctionBody("", 0, box), /SOP Instance UID/);
  assert.throws(() => L.correctionBody("1.2.x", 0, box), /SOP Instance UID/);
  assert.throws(() => L.correctionBody("1.2.3", -1, box), /frame must be a whole number/);
  assert.throws(() => L.correctionBody("1.2.3", 1.5, box), /frame must be a whole number/);
  assert.throws(() => L.correctionBody("1.2.3", 0, { points: [], labels: [], box: null }), /click on the frame/);
  assert.throws(() => L.correctionBody("1.2.3", 0, { points: [[1, 2]], labels: [], box: null }), /label/);
  assert.throws(() => L.correctionBody("1.2.3", 0, box, { radius: "-2" }), /radius/);
});

test("frame URLs", () => {
  assert.equal(L.frameUrl("1.2.3", "7", "ai"), "/instances/1.2.3/frames/7?masks=ai&format=auto");
  assert.equal(L.frameUrl("1.2.3", 0), "/instances/1.2.3/frames/0?masks=latest&format=auto");
  assert.throws(() => L.frameUrl("1.2.3", "x"), /frame/);
});

test("patient names and dates read as people write them", () => {
  assert.equal(L.personName("Doe^John"), "Doe, John");
  assert.equal(L.personName("Doe^John^Q^Dr^Jr"), "Doe, Dr John Q Jr");
  assert.equal(L.personName("Doe"), "Doe");
  assert.equal(L.personName("Yamada^Tarou=山田^太郎"), "Yamada, Tarou");
  assert.equal(L.personName(""), "");
  assert.equal(L.dicomDate("20261207"), "2026-12-07");
  assert.equal(L.dicomDate("2026"), "2026");
});

test("a processed instance is labelled with date, patient, kind and corrections", () => {
  const video = { patient_name: "Doe^Jane", patient_id: "P-7", study_date: "20261207", modality: "XC", frames: 300,
    series_description: "Intraoral camera", study_description: "", corrections: 2 };
  assert.equal(L.instanceLabel(video), "2026-12-07 · Doe, Jane (P-7) · XC video, 300 frames · Intraoral camera · corrected 2×");
  const photo = { patient_name: "", patient_id: "", study_date: "", modality: "", frames: 1, corrections: 0 };
  assert.equal(L.instanceLabel(photo), "(no date) · (no name) · ? photo");
  assert.equal(L.patientLine({ ...video, patient_birth_date: "19800102", patient_sex: "F", accession_number: "A1" }),
    "Patient: Doe, Jane · ID P-7 · born 1980-01-02 · F · study 2026-12-07 · accession A1 · Intraoral camera");
});

test("the address fragment names a frame and reads back; a bad one names none", () => {
  assert.equal(L.hashFor("1.2.3", 4), "#sop=1.2.3&frame=4");
  assert.deepEqual(L.parseHash("#sop=1.2.3&frame=4"), { sop: "1.2.3", frame: 4 });
  assert.deepEqual(L.parseHash("#sop=1.2.3"), { sop: "1.2.3", frame: 0 });
  assert.deepEqual(L.parseHash("#sop=1.2.3&frame=-1"), { sop: "1.2.3", frame: 0 });
  assert.equal(L.parseHash("#sop=<script>"), null);
  assert.equal(L.parseHash(""), null);
  assert.throws(() => L.hashFor("1.2.3", -1), /frame/);
});

test("the line under the token says under whose name corrections go", () => {
  assert.equal(L.signedInLine({ kind: "user", name: "Smith^Anna^^Dr" }),
    "Signed in as Smith, Dr Anna: your corrections carry your name.");
  assert.equal(L.signedInLine({ kind: "user", name: "Jones^Pat", role: "admin" }),
    "Signed in as Jones, Pat (administrator): your corrections carry your name.");
  assert.match(L.signedInLine({ kind: "service", name: null }), /service token: corrections carry no name/);
  assert.match(L.signedInLine({ kind: "disabled", name: null }), /Authentication is off/);
});
