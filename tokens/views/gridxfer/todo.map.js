// Claimable tokens of a night, oldest eligible first: key [token_set, not_before].
// A claim reads the range [night, 0] .. [night, now], so retries wait their backoff.
function (doc) {
  if (doc.type == "token" && doc.state == "todo") {
    emit([doc.token_set, doc.not_before || 0], null);
  }
}
