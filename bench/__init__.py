"""Benchmarks of the telemetry path (``computewatch bench``; see bench/README.md).

Each benchmark runs the collector in its own process and the load generator in
another, so the collector's CPU and memory are measured on their own. Nothing
here is asserted in tests except that the scripts run and count correctly.
"""
