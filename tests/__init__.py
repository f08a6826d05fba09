"""The test suite (a regular package, so that a `tests` package another distribution installs, torch-fidelity 0.4's for one, cannot shadow it)."""
