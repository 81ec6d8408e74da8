"""pacsflow benchmarks: each module has ``main()`` and prints ratios against a peer run in the same process."""
