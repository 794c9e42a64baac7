"""The ground floor every room stands on: value checks with clear errors (``value_checks``), parameter
tags that tell the optimizer and sharding what a parameter is (``tags``), atomic file writes
(``io``) and timing for the micro-benchmarks (``timing``). Imports nothing else of memzoo."""
