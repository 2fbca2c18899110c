"""Evaluation of one endpoint answer by the configured metrics (docs/execution-metrics.md).

``Evaluator.evaluate`` gives one ``MetricOutcome`` per metric and never raises for a metric's or a judge's
problem (cancellation still propagates). Its status is ``scored`` (with ``score`` and ``passed``),
``not_scored`` (no judge provider configured, no latency measured) or ``error`` (misconfigured metric, judge
HTTP error, unusable verdict).

A test's verdict, ``test_verdict(outcomes)``:

- ``fail`` when any scored metric failed; the reason lists the failed metrics and why.
- ``pass`` when at least one metric was scored and every scored metric passed. Metrics that ended ``error``
  or ``not_scored`` do not turn a pass into a fail (a judge outage is not a wrong answer); the reason
  names them.
- ``not_scored`` when there are no metrics or none was scored; the reason joins theirs.

Modules: ``deterministic`` (text and latency checks), ``judge_prompt`` (the fenced judge prompt), ``verdict``
(reading the judge's JSON), ``gemini`` and ``azure_openai`` (the providers, direct REST), ``transport`` (retries),
``evaluator``, ``rollup``.
"""

from worker.execution.metrics.evaluator import NO_PROVIDER, Evaluator
from worker.execution.metrics.rollup import test_verdict

__all__ = ["NO_PROVIDER", "Evaluator", "test_verdict"]
