"""Benchmarks: the fixed server against its peers, side by side (``make bench``)."""
