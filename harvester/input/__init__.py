"""The call list: its bytes (a file, a pipe, gzip), its records (text, CSV, NDJSON), the job's
fingerprint of it; and the API's own call listing, for a window."""
