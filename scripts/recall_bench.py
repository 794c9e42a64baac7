"""Same as ``memzoo-bench``: ``python scripts/recall_bench.py quick`` trains the quick grid and writes
results/quick/ (results.csv, summary.md, figures, tb/)."""

from zoo.grid.runner import main

if __name__ == "__main__":
    main()
