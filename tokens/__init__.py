"""Token-set templates and CouchDB view sources (shipped as package data)."""
