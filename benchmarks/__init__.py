"""Side-by-side benchmarks of Switchyard against the engines it wraps: `python -m benchmarks`."""
