"""Benchmarks: each module runs alone (``python -m bench.NAME``) on loopback and prints its
figures, writing them as JSON to ``bench/out/NAME.json`` too."""
