// Tokens with more than one live branch (only a cluster makes them; docs/tokens.md):
// key [token_set, _id], value the number of losing branches. `gridxfer tokens reap`
// and the workers settle them (Pool.sweep).
function (doc) {
  if (doc.type == "token" && doc._conflicts) {
    emit([doc.token_set, doc._id], doc._conflicts.length);
  }
}
