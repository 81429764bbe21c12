// PiCaS standard: finished without error (errors carry lock == done == 99).
function (doc) {
  if (doc.type == "token" && doc.lock > 0 && doc.done > 0 && !(doc.lock == 99 && doc.done == 99)) {
    emit(doc._id, doc._id);
  }
}
