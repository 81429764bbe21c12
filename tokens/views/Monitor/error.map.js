// PiCaS standard: Task.error() marks a token with lock == done == 99.
function (doc) {
  if (doc.type == "token" && doc.lock == 99 && doc.done == 99) {
    emit(doc._id, doc._id);
  }
}
