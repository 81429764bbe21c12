// Tokens waiting for tape recall: key [token_set, request id].
function (doc) {
  if (doc.type !== "token" || typeof doc.token_set !== "string" || !doc.token_set) return;
  if (doc.state === "staging") {
    var r = doc.stage_request;
    emit([doc.token_set, r && typeof r === "object" && r.id !== undefined ? r.id : null], null);
  }
}
