// The correction page's logic, apart from the page so that it can be tested (tests/js/):
// where a click lands on the frame, the box a drag makes, and the request it becomes.
// Coordinates are the frame's pixels, x to the right and y down, as the API takes them.
(function (root) {
  "use strict";

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  // A pointer position (clientX, clientY) on an image drawn in `rect` (its bounding
  // client rectangle) → [x, y] in the pixels of the frame (naturalWidth × naturalHeight),
  // rounded to 0.1 px and kept on the frame (0 ≤ x ≤ width, 0 ≤ y ≤ height).
  function imagePoint(clientX, clientY, rect, naturalWidth, naturalHeight) {
    if (!(rect.width > 0 && rect.height > 0 && naturalWidth > 0 && naturalHeight > 0)) {
      throw new Error("the frame is not shown yet");
    }
    const x = ((clientX - rect.left) * naturalWidth) / rect.width;
    const y = ((clientY - rect.top) * naturalHeight) / rect.height;
    return [clamp(Math.round(x * 10) / 10, 0, naturalWidth), clamp(Math.round(y * 10) / 10, 0, naturalHeight)];
  }

  // Two corners of a drag, in any order → [x0, y0, x1, y1] with x0 ≤ x1 and y0 ≤ y1.
  function boxFrom(a, b) {
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  }

  // A press and a release further apart than `minPixels` (frame pixels) on both axes is a
  // drag (a box); anything less is a click (a point).
  function isDrag(a, b, minPixels) {
    const limit = minPixels === undefined ? 4 : minPixels;
    return Math.abs(a[0] - b[0]) > limit && Math.abs(a[1] - b[1]) > limit;
  }

  function wholeNumber(value, name, low) {
    const number = Number(value);
    if (!Number.isInteger(number) || number < low) {
      throw new Error(`${name} must be a whole number ≥ ${low}`);
    }
    return number;
  }

  // The body of POST /corrections/tooth-masks. `prompts` holds `points` ([[x, y], ...]),
  // `labels` (1 tooth, 0 not tooth) and `box` ([x0, y0, x1, y1] or null); `radius` and
  // `basedOn` may be "" or null (omitted: the whole clip; the AI's masks).
  function correctionBody(sop, frame, prompts, options) {
    const opts = options || {};
    if (!/^[0-9]+(\.[0-9]+)*$/.test(String(sop || "")) || String(sop).length > 64) {
      throw new Error("give the SOP Instance UID of a processed photo or video");
    }
    const points = prompts.points || [];
    const labels = prompts.labels || [];
    if (points.length !== labels.length) {
      throw new Error("each click needs its label");
    }
    if (points.length === 0 && !prompts.box) {
      throw new Error("click on the frame or draw a box first");
    }
    const body = { sop_instance_uid: String(sop), frame: wholeNumber(frame, "frame", 0) };
    if (points.length > 0) {
      body.points = points.map((p) => [p[0], p[1]]);
      body.labels = labels.map((l) => (l ? 1 : 0));
    }
    if (prompts.box) {
      body.box = prompts.box.slice(0, 4);
    }
    if (opts.radius !== undefined && opts.radius !== null && String(opts.radius).trim() !== "") {
      body.radius = wholeNumber(opts.radius, "radius", 0);
    }
    if (opts.restore) {
      body.restore = true;
    }
    if (opts.basedOn) {
      body.based_on = String(opts.basedOn);
    }
    return body;
  }

  // The URL of a frame's image (masks: "latest", "ai" or "none"): PNG, or JPEG for a frame
  // larger than 1280x720 ("auto"), at the frame's own size.
  function frameUrl(sop, frame, masks) {
    return `/instances/${encodeURIComponent(sop)}/frames/${wholeNumber(frame, "frame", 0)}`
      + `?masks=${encodeURIComponent(masks || "latest")}&format=auto`;
  }

  // A DICOM person name ("Family^Given^Middle^Prefix^Suffix", the alphabetic group before
  // any "=") as people write it: "Family, Given Middle".
  function personName(value) {
    const parts = String(value || "").split("=")[0].split("^").map((p) => p.trim());
    const family = parts[0] || "";
    const given = [parts[3], parts[1], parts[2], parts[4]].filter(Boolean).join(" ");
    return family && given ? `${family}, ${given}` : family || given;
  }

  // A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as it is.
  function dicomDate(value) {
    const text = String(value || "").trim();
    return /^[0-9]{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6, 8)}` : text;
  }

  // One line for a processed photo or video of GET /instances, to pick it from a list.
  function instanceLabel(item) {
    const who = personName(item.patient_name) || "(no name)";
    const radiograph = item.workflow === "radiograph";
    const what = radiograph ? "radiograph" : item.frames > 1 ? `video, ${item.frames} frames` : "photo";
    const parts = [dicomDate(item.study_date) || "(no date)", `${who}${item.patient_id ? ` (${item.patient_id})` : ""}`,
      `${item.modality || "?"} ${what}`];
    if (item.series_description || item.study_description) parts.push(item.series_description || item.study_description);
    if (item.corrections > 0) parts.push(`${radiograph ? "reviewed" : "corrected"} ${item.corrections}×`);
    return parts.join(" · ");
  }

  // Who and what the frame on screen shows, to be read before correcting it.
  function patientLine(item) {
    const parts = [`Patient: ${personName(item.patient_name) || "(no name)"}`];
    if (item.patient_id) parts.push(`ID ${item.patient_id}`);
    if (item.patient_birth_date) parts.push(`born ${dicomDate(item.patient_birth_date)}`);
    if (item.patient_sex) parts.push(item.patient_sex);
    parts.push(`study ${dicomDate(item.study_date) || "(no date)"}`);
    if (item.accession_number) parts.push(`accession ${item.accession_number}`);
    if (item.study_description) parts.push(item.study_description);
    if (item.series_description) parts.push(item.series_description);
    return parts.join(" · ");
  }

  // Under whose name the corrections sent from the page go (GET /me).
  function signedInLine(me) {
    if (me && me.kind === "user") {
      const admin = me.role === "admin" ? " (administrator)" : "";
      return `Signed in as ${personName(me.name)}${admin}: your corrections carry your name.`;
    }
    if (me && me.kind === "disabled") return "Authentication is off (development): corrections carry no name.";
    return "Signed in with a service token: corrections carry no name (ask for a token of your own).";
  }

  // The page's address fragment for a frame ("#sop=…&frame=…"), and back; null when the
  // fragment names no valid instance (a link to the page may carry one).
  function hashFor(sop, frame) {
    return `#sop=${encodeURIComponent(sop)}&frame=${wholeNumber(frame, "frame", 0)}`;
  }

  function parseHash(hash) {
    const params = new URLSearchParams(String(hash || "").replace(/^#/, ""));
    const sop = params.get("sop") || "";
    if (!/^[0-9]+(\.[0-9]+)*$/.test(sop) || sop.length > 64) return null;
    const frame = params.has("frame") ? Number(params.get("frame")) : 0;
    return { sop, frame: Number.isInteger(frame) && frame >= 0 ? frame : 0 };
  }

  const api = {
    imagePoint, boxFrom, isDrag, correctionBody, frameUrl, personName, dicomDate, instanceLabel, patientLine,
    signedInLine, hashFor, parseHash,
  };
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api;
  } else {
    root.CorrectLogic = api;
  }
})(this);
