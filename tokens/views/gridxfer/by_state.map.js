// Counts and bytes per night and state: key [token_set, state, _id], value bytes.
// group_level=2 with the _stats reduce gives count = tokens, sum = bytes; the id
// makes keys unique so a night's tokens can be paged by key.
// Whatever a document holds, the reduce gets a number: a token in no known state
// counts as "error" (it is quarantined to error 2), a bytes_total that is no
// number as 0. Documents without a night are no tokens of ours.
function (doc) {
  if (doc.type !== "token" || typeof doc.token_set !== "string" || !doc.token_set) return;
  var states = ["todo", "locked", "staging", "archiving", "done", "error"];
  var bytes = doc.bytes_total;
  if (typeof bytes !== "number" || !isFinite(bytes) || bytes < 0) bytes = 0;
  emit([doc.token_set, states.indexOf(doc.state) >= 0 ? doc.state : "error", doc._id], bytes);
}
