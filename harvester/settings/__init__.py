"""Settings: loaded once from the config file, the environment and the flags, validated, frozen;
the flags' table; the window, the shard."""
