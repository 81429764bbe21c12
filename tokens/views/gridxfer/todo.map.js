// Claimable tokens of a night: key [token_set, not_before, rnd].
// A claim reads from [night, 0, <random>] up to [night, now, {}]: retries wait their
// backoff, and workers starting at random points rarely race for the same token.
// A not_before that is no number is 0: the token is claimed at once, and the claim
// quarantines it (error 2) rather than leave it unclaimable for ever.
function (doc) {
  if (doc.type !== "token" || typeof doc.token_set !== "string" || !doc.token_set) return;
  if (doc.state !== "todo") return;
  function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }
  emit([doc.token_set, num(doc.not_before), num(doc.rnd)], null);
}
