"""The event stream as a file: what a recording holds, how it is written, and how it is read back."""
