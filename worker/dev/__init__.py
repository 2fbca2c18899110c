"""Development helpers: embedded services for `make run` and the test suite. Never used in production."""
