// Claimable tokens of a night: key [token_set, not_before, rnd].
// A claim reads from [night, 0, <random>] up to [night, now, {}]: retries wait their
// backoff, and workers starting at random points rarely race for the same token.
function (doc) {
  if (doc.type == "token" && doc.state == "todo") {
    emit([doc.token_set, doc.not_before || 0, doc.rnd || 0], null);
  }
}
