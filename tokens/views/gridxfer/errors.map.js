// Errors per night and code: key [token_set, code]; reduce _count.
function (doc) {
  if (doc.type == "token" && doc.state == "error" && doc.error) {
    emit([doc.token_set, doc.error.code], doc.error.message);
  }
}
