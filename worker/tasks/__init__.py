"""Product tasks; `celery -A worker.app` autodiscovers this package. Names are a wire contract."""

from worker.tasks.examples import count_test_sets, create_test_set, echo, get_test_configuration, manual_db_example
from worker.tasks.execution import cancel_test_run, execute_test_configuration, run_lane, sweep

__all__ = ["cancel_test_run", "count_test_sets", "create_test_set", "echo", "execute_test_configuration",
           "get_test_configuration", "manual_db_example", "run_lane", "sweep"]
