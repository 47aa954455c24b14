"""Grid task executors: one module per task type, each a `TaskExecutor` (see `executor.py`)."""
