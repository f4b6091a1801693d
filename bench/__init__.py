"""`make bench`: the performance figures of issue 6, each a ratio measured side by side.

``python -m bench [--quick] [--out BENCHMARKS.md]`` runs them all on this machine and writes
the report and its plots (``docs/bench/``). Nothing here is imported by the service.
"""
