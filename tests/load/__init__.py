"""`make load`: many concurrent connections against a real `ferry serve` (tests/load/run.py)."""
