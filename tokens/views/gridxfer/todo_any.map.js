// Claimable tokens of every night: key [not_before, rnd] (see todo).
function (doc) {
  if (doc.type !== "token" || typeof doc.token_set !== "string" || !doc.token_set) return;
  if (doc.state !== "todo") return;
  function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }
  emit([num(doc.not_before), num(doc.rnd)], doc.token_set);
}
