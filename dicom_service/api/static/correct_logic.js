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

  // The URL of a frame's PNG (masks: "latest", "ai" or "none").
  function frameUrl(sop, frame, masks) {
    return `/instances/${encodeURIComponent(sop)}/frames/${wholeNumber(frame, "frame", 0)}?masks=${encodeURIComponent(masks || "latest")}`;
  }

  const api = { imagePoint, boxFrom, isDrag, correctionBody, frameUrl };
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api;
  } else {
    root.CorrectLogic = api;
  }
})(this);
