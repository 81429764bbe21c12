// Held tokens by lease expiry: a range up to "now" finds the lost workers.
// Key 0 for a held token without a valid lease and for a token in no known state:
// malformed, they are found by the same range and quarantined (error 2).
function (doc) {
  if (doc.type !== "token" || typeof doc.token_set !== "string" || !doc.token_set) return;
  var states = ["todo", "locked", "staging", "archiving", "done", "error"];
  var held = doc.state === "locked" || doc.state === "archiving";
  if (!held && states.indexOf(doc.state) >= 0) return;
  var t = doc.lease_expires;
  if (!held || typeof t !== "number" || !isFinite(t) || t < 0) t = 0;
  var w = doc.worker;
  emit(t, [doc.token_set, w && typeof w === "object" && typeof w.id === "string" ? w.id : null]);
}
