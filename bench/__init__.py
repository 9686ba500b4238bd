"""`make bench`: op25b-ctl measured at ISP scale, every figure a ratio against a baseline.

    inventory  synthetic Policy (pools, prefixes) and the baselines' equivalent texts (pure)
    netns      throw-away namespaces, tracked by name and removed on any exit (I/O)
    worker     the timed operations, run *inside* a namespace as `python -m bench.worker` (I/O)
    datapath   TCP connect-rate load generator, one process per CPU (inside the lab's `sub`)
    report     medians, ratios, PASS/MISS, docs/benchmarks.md (pure)
    run        orchestration: `python -m bench.run` (what `make bench` calls)

Not part of `make test`: it needs root, minutes, and a quiet machine for absolute numbers.
Ratios against baselines measured in the same run are what the targets are about.
"""
