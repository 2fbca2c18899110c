"""What ``python -m worker run|flower`` needs before it ``exec``s Celery: the argv, Flower's environment, the
per-child memory bound and, for Flower beside the worker, a small supervisor."""
