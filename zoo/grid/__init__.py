"""Benchmark grids: ``memzoo-bench`` (``runner``) trains every cell of a grid (``zoo/configs/bench``)
through Hydra's launchers and writes the report (``report``: results.csv, summary.md, figures)."""
