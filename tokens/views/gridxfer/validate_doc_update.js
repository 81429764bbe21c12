// Refuses, from any client, a write that would break a token, and says why (HTTP 403).
// Deletions and documents that are not tokens pass. GRID_XFER/token.py's TokenDoc
// checks the same fields before a worker runs a token.
function (newDoc, oldDoc, userCtx, secObj) {
  if (newDoc._deleted) return;
  if (newDoc.type !== "token" && !(oldDoc && oldDoc.type === "token")) return;
  function bad(field, what) {
    throw({forbidden: "invalid token " + newDoc._id + ": " + field + " " + what});
  }
  function isNum(v) { return typeof v === "number" && isFinite(v); }
  var states = ["todo", "locked", "staging", "archiving", "done", "error"];
  if (newDoc.type !== "token") bad("type", "must stay \"token\"");
  // A worker quarantines a broken token (error 2, "invalid token"): always allowed.
  if (newDoc.state === "error" && newDoc.error && newDoc.error.code === 2) return;
  if (states.indexOf(newDoc.state) < 0) bad("state", "must be one of " + states.join(", "));
  if (typeof newDoc.token_set !== "string" || !newDoc.token_set) bad("token_set", "must be a non-empty string");
  if (typeof newDoc.exposure !== "string" || !newDoc.exposure) bad("exposure", "must be a non-empty string");
  ["lock", "done", "output", "attempts", "max_attempts"].forEach(function (f) {
    if (!isNum(newDoc[f])) bad(f, "must be a number");
  });
  if (newDoc.attempts < 0) bad("attempts", "must not be negative");
  if (newDoc.max_attempts < 1) bad("max_attempts", "must be at least 1");
  ["not_before", "lease_expires", "bytes_total", "scrub_count", "created", "updated"].forEach(function (f) {
    if (newDoc[f] !== undefined && newDoc[f] !== null && !isNum(newDoc[f])) bad(f, "must be a number");
  });
  if (!Array.isArray(newDoc.files)) bad("files", "must be a list");
  newDoc.files.forEach(function (f, i) {
    if (!f || typeof f !== "object" || typeof f.name !== "string" || !f.name) {
      bad("files[" + i + "]", "must be an object with a non-empty name");
    }
  });
  if (newDoc.history !== undefined && !Array.isArray(newDoc.history)) bad("history", "must be a list");
  // PiCaS keeps a list of records ([] by default; its Task.error() appends one).
  if (Array.isArray(newDoc.error)) {
    newDoc.error.forEach(function (e, i) {
      if (!e || typeof e !== "object" || Array.isArray(e)) bad("error[" + i + "]", "must be an object");
    });
  } else if (newDoc.error !== undefined && newDoc.error !== null &&
      (typeof newDoc.error !== "object" || !isNum(newDoc.error.code))) {
    bad("error", "must be null, a list (PiCaS) or an object with a numeric code");
  }
  if (newDoc.worker !== undefined && newDoc.worker !== null && typeof newDoc.worker !== "object") {
    bad("worker", "must be null or an object");
  }
  if ((newDoc.state === "locked" || newDoc.state === "archiving") &&
      !(isNum(newDoc.lease_expires) && newDoc.lease_expires > 0)) {
    bad("lease_expires", "must be set while the token is held");
  }
}
