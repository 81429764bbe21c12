// Completions over time, for a rate and an ETA: key [minute, token_set],
// value [done, error, bytes of done tokens]; reduce _sum (element-wise).
// A range from [now - window] to [now, {}] with group_level=2 gives each night's
// recent completions in one query, whatever the number of nights.
// Only numbers reach the reduce: a time or size that is no number counts as 0.
function (doc) {
  if (doc.type !== "token" || typeof doc.token_set !== "string" || !doc.token_set) return;
  function num(v) { return typeof v === "number" && isFinite(v) && v > 0 ? v : 0; }
  var t = 0, v = null;
  if (doc.state === "done") {
    t = num(doc.done);
    v = [1, 0, num(doc.bytes_total)];
  } else if (doc.state === "error" && doc.error && typeof doc.error === "object") {
    t = num(doc.error.time);
    v = [0, 1, 0];
  }
  if (t > 0) emit([Math.floor(t / 60) * 60, doc.token_set], v);
}
