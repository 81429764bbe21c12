// Tokens waiting for tape recall: key [token_set, request id].
function (doc) {
  if (doc.type == "token" && doc.state == "staging") {
    emit([doc.token_set, doc.stage_request ? doc.stage_request.id : null], null);
  }
}
