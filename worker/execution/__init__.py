"""Test execution: run a test configuration against the user's endpoint, judge each answer, store one result per test
(docs/execution.md)."""
