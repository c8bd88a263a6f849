"""Storing what is harvested exactly once: the sink the pool hands its calls to, the commit
protocol (journal), the SQLite ledger, durable files, the failures file, the place in a listing,
and a job's status read from its state. Nothing here imports the HTTP stack."""
