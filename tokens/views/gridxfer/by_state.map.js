// Counts and bytes per night and state: key [token_set, state, _id], value bytes.
// group_level=2 with the _stats reduce gives count = tokens, sum = bytes; the id
// makes keys unique so a night's tokens can be paged by key.
function (doc) {
  if (doc.type == "token") {
    emit([doc.token_set, doc.state, doc._id], doc.bytes_total || 0);
  }
}
