"""The heartbeat watchdog in-process: it gives up after WORKER_BROKER_LOST_EXIT_AFTER, and 0 means never."""

from __future__ import annotations

import time
from pathlib import Path

from worker.health import HealthMonitor


def test_watchdog_gives_up_after_the_bound(tmp_path: Path) -> None:
    monitor = HealthMonitor(tmp_path, interval=0.2, lost_exit_after=1, soft_shutdown_timeout=5)
    monitor._give_up = lambda elapsed: setattr(monitor, "gave_up", True)  # no process exit inside pytest
    monitor.start_watchdog()
    try:
        time.sleep(2.5)
        assert monitor.gave_up
    finally:
        monitor._stop.set()


def test_zero_means_never_give_up(tmp_path: Path) -> None:
    monitor = HealthMonitor(tmp_path, interval=0.2, lost_exit_after=0, soft_shutdown_timeout=5)
    monitor._give_up = lambda elapsed: setattr(monitor, "gave_up", True)
    monitor.start_watchdog()
    try:
        time.sleep(2.5)
        assert not monitor.gave_up
    finally:
        monitor._stop.set()
