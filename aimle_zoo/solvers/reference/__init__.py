"""Per-instance CPU reference solvers (scipy, networkx): test oracles and benchmark baselines."""
