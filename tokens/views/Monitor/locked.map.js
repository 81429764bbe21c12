// PiCaS standard: claimed, not finished (our locked, staging and archiving).
function (doc) {
  if (doc.type == "token" && doc.lock > 0 && doc.done == 0) {
    emit(doc._id, doc._id);
  }
}
