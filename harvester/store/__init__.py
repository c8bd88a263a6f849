"""Storing what is harvested exactly once: the sink the pool hands its calls to, the commit
protocol (journal) and the batches it commits, the output files opened as committed, the SQLite
ledger and the job's state and identity in it, the last run's record, durable files, the
failures file, the place in a listing, and a job's status read from its state. Nothing here
imports the HTTP stack."""
