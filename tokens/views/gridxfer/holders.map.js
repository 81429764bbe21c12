// Held tokens by night and worker: key [token_set, worker id, host, batch job id],
// value lease_expires; reduce _stats (count = tokens held, min = earliest expiry).
// group_level=2 counts a night's workers; group_level=4 lists them.
// Key parts are strings or null and the value a number (0: no valid lease).
function (doc) {
  if (doc.type !== "token" || typeof doc.token_set !== "string" || !doc.token_set) return;
  var w = doc.worker;
  if (!w || typeof w !== "object" || Array.isArray(w)) return;
  if (doc.state !== "locked" && doc.state !== "staging" && doc.state !== "archiving") return;
  function str(v) {
    return typeof v === "string" ? v : typeof v === "number" && isFinite(v) ? String(v) : null;
  }
  var t = doc.lease_expires;
  emit([doc.token_set, str(w.id), str(w.host), str(w.job_id)],
       typeof t === "number" && isFinite(t) ? t : 0);
}
