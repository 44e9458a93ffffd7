"""pyxen benchmarks: every benchmark prints ratios against a same-run reference."""
