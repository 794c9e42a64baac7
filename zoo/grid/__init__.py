"""Benchmark grids: ``memzoo-grid`` (``runner``; ``memzoo-bench`` is its older name) trains every cell
of a grid (``zoo/grid/specs``) through Hydra's launchers and writes the report (``report``:
results.csv, summary.md, figures)."""
