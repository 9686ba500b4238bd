"""The kernel seam: read our table and counters, check and apply transactions."""
