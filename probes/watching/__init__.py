"""The verdict around other code: watch() on the caller's own loop, its options, the pytest plugin."""
