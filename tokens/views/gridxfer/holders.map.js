// Held tokens by night and worker: key [token_set, worker id, host, batch job id],
// value lease_expires; reduce _stats (count = tokens held, min = earliest expiry).
// group_level=2 counts a night's workers; group_level=4 lists them.
function (doc) {
  if (doc.type == "token" && doc.worker &&
      (doc.state == "locked" || doc.state == "staging" || doc.state == "archiving")) {
    emit([doc.token_set, doc.worker.id || null, doc.worker.host || null,
          doc.worker.job_id || null], doc.lease_expires || 0);
  }
}
