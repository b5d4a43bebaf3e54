"""Benchmarks: quality in the convention of SR papers, and speed/memory side by side."""
