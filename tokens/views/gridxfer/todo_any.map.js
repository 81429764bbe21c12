// Claimable tokens of every night: key [not_before, rnd] (see todo).
function (doc) {
  if (doc.type == "token" && doc.state == "todo") {
    emit([doc.not_before || 0, doc.rnd || 0], doc.token_set);
  }
}
