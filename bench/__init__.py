"""`make bench`: throughput and latency figures for the pair. Measured, never asserted."""
