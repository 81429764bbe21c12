// PiCaS standard: one row per token, keyed by its PiCaS state.
function (doc) {
  if (doc.type != "token") return;
  if (doc.lock == 0 && doc.done == 0) emit("todo", 1);
  else if (doc.lock == 99 && doc.done == 99) emit("error", 1);
  else if (doc.lock > 0 && doc.done == 0) emit("locked", 1);
  else if (doc.lock > 0 && doc.done > 0) emit("done", 1);
}
