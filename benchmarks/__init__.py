"""`make bench`: throughput, memory and quality tables, each side by side with a baseline."""
