"""The doctor: this machine against what the project needs on a GPU, then the project's own commands as a smoke
test (`python -m doctor`). It runs programs, benchmarks and rl as a user does, so it sits above all of them."""
