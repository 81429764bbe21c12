// Counts and bytes per night and state: key [token_set, state], value bytes.
// Reduce with _stats: count = tokens, sum = bytes.
function (doc) {
  if (doc.type == "token") {
    emit([doc.token_set, doc.state], doc.bytes_total || 0);
  }
}
