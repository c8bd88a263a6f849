"""Running a job: its set-up, the pool of workers, the outage guard, the nights of a nightly job,
stopping on request, the dry run."""
