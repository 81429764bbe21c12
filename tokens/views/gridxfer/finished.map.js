// Completions over time, for a rate and an ETA: key [minute, token_set],
// value [done, error, bytes of done tokens]; reduce _sum (element-wise).
// A range from [now - window] to [now, {}] with group_level=2 gives each night's
// recent completions in one query, whatever the number of nights.
function (doc) {
  if (doc.type != "token") return;
  var t = 0, v = null;
  if (doc.state == "done") {
    t = doc.done || 0;
    v = [1, 0, doc.bytes_total || 0];
  } else if (doc.state == "error" && doc.error) {
    t = doc.error.time || 0;
    v = [0, 1, 0];
  }
  if (t > 0) emit([Math.floor(t / 60) * 60, doc.token_set], v);
}
