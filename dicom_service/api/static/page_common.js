// What both correction pages do alike: the token (kept for the browser tab's session), the
// status line, the node's errors, who is signed in, the list of processed instances, and
// following a job. Each page loads it after correct_logic.js and before its own script.
(function (root) {
  "use strict";
  const L = root.CorrectLogic;
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "dental-ai-token";

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  function token() {
    return $("token").value.trim();
  }

  function headers(extra) {
    return Object.assign({ Authorization: `Bearer ${token()}` }, extra || {});
  }

  // The node's refusal as one line ("422: …").
  async function problem(response) {
    try {
      const body = await response.json();
      return `${response.status}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
    } catch (e) {
      return `${response.status} ${response.statusText}`;
    }
  }

  // The token field starts with this tab's token and keeps what is typed.
  function restoreToken() {
    $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function keepToken() {
    sessionStorage.setItem(TOKEN_KEY, token());
  }

  // Whose token is typed: the line beside it says under whose name corrections go.
  async function signIn() {
    if (!token()) return;
    const response = await fetch("/me", { headers: headers() });
    $("signedIn").textContent = response.ok ? L.signedInLine(await response.json())
      : `The token is not accepted (${await problem(response)}).`;
    $("signedIn").className = response.ok ? "" : "error";
  }

  // The instances `workflow` processed, newest first, into the "recent" list; `current`:
  // the one on screen, selected if listed.
  async function listRecent(workflow, current) {
    if (!token()) return;
    const response = await fetch(`/instances?workflow=${workflow}&limit=100`, { headers: headers() });
    if (!response.ok) {
      const what = workflow === "radiograph" ? "radiographs" : "photos and videos";
      status(`listing the processed ${what}: ${await problem(response)}`, true);
      return;
    }
    const items = await response.json();
    const select = $("recent");
    select.replaceChildren(new Option(items.length ? "(pick one)" : "(none processed yet)", ""));
    for (const item of items) select.add(new Option(L.instanceLabel(item), item.sop_instance_uid));
    select.value = current && items.some((item) => item.sop_instance_uid === current) ? current : "";
  }

  // Follow job `jobId` (`what`: "correction", "review") until it ends: the job once it
  // succeeded, else null (its state and error shown).
  async function follow(jobId, what) {
    for (;;) {
      const response = await fetch(`/jobs/${jobId}`, { headers: headers() });
      if (!response.ok) {
        status(await problem(response), true);
        return null;
      }
      const job = await response.json();
      if (job.state === "succeeded") return job;
      if (!["queued", "running"].includes(job.state)) {
        status(`${what} job ${jobId} ${job.state}: ${job.error || ""}`, true);
        return null;
      }
      status(`${what} job ${jobId} ${job.state}…`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  // A handler whose failure to reach the node (network down, node stopped) is shown, not lost.
  function guarded(handler) {
    return async (event) => {
      try {
        await handler(event);
      } catch (e) {
        status(`the node did not answer: ${e.message}`, true);
      }
    };
  }

  root.PageCommon = { status, token, headers, problem, restoreToken, keepToken, signIn, listRecent, follow, guarded };
})(this);
