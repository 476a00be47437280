"""Speed, memory and parity benchmarks (run as ``python -m benchmarks.<name>``)."""
