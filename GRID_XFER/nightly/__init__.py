"""`gridxfer nightly`: the unattended service that runs a season (docs/operations.md).

Each cycle it finds ready exposures and late files and makes or updates their
tokens, reaps, polls tape, keeps each stream's workers sized to its backlog,
raises alerts and writes each night's morning report. Only the leader (one per
database, by a lease kept in CouchDB) acts; a standby waits for the lease.
"""
