// Errors per night and code: key [token_set, code], value the message; reduce _count.
// An error token without a numeric code, or a token in no known state, counts as
// code 2 (invalid token), as by_state counts it as an error.
function (doc) {
  if (doc.type !== "token" || typeof doc.token_set !== "string" || !doc.token_set) return;
  var states = ["todo", "locked", "staging", "archiving", "done", "error"];
  var known = states.indexOf(doc.state) >= 0;
  if (known && doc.state !== "error") return;
  var e = doc.error;
  if (known && e && typeof e === "object" && typeof e.code === "number" && isFinite(e.code)) {
    emit([doc.token_set, e.code], typeof e.message === "string" ? e.message : null);
  } else if (known) {
    emit([doc.token_set, 2], "invalid token " + doc._id + ": error: no record with a numeric code");
  } else {
    emit([doc.token_set, 2], "invalid token " + doc._id + ": state: " + JSON.stringify(doc.state) +
         " is no token state");
  }
}
