// Held tokens by lease expiry: a range up to "now" finds the lost workers.
function (doc) {
  if (doc.type == "token" && (doc.state == "locked" || doc.state == "archiving")) {
    emit(doc.lease_expires || 0, [doc.token_set, doc.worker ? doc.worker.id : null]);
  }
}
