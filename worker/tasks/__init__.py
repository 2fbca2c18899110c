"""Product tasks; `celery -A worker.app` autodiscovers this package. Names are a wire contract."""

from worker.tasks.examples import count_test_sets, create_test_set, echo, get_test_configuration, manual_db_example

__all__ = ["count_test_sets", "create_test_set", "echo", "get_test_configuration", "manual_db_example"]
