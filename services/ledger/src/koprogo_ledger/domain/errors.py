"""The ledger's errors.

    LedgerError
    ├── InvalidEventError          the event can never be projected: dead-letter it
    ├── StoreUnavailableError      PostgreSQL cannot be reached: hold the event until it can
    ├── LedgerKeyError             the heads were signed with another key than this ledger's: refuse to start
    └── NotYetProjectedError       what the event refers to is not in the ledger yet: retry later
        ├── RequestNotYetProjectedError
        ├── ResponseNotYetProjectedError
        ├── TaskNotYetProjectedError
        └── AttemptNotYetProjectedError

Messages name ids and reasons, never what a user wrote.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of the ledger's errors."""


class InvalidEventError(LedgerError):
    """The event is well-formed JSON of a known type but can never be stored (bad id, value out of range)."""


class StoreUnavailableError(LedgerError):
    """The database is down or restarting: waiting helps, spending the message's deliveries does not."""


class LedgerKeyError(LedgerError):
    """The token ledger's heads were signed with another key: heads signed with this one would not
    verify against the recorded key, nor the old ones against this one."""


class NotYetProjectedError(LedgerError):
    """The event refers to a row a previous event creates; that event has not been applied yet."""


class RequestNotYetProjectedError(NotYetProjectedError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"request {request_id} is not in the ledger yet")
        self.request_id = request_id


class ResponseNotYetProjectedError(NotYetProjectedError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"no response for request {request_id} in the ledger yet")
        self.request_id = request_id


class TaskNotYetProjectedError(NotYetProjectedError):
    """A task event came before the task's TaskSubmitted was applied (a redelivery reordered them)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} is not in the ledger yet")
        self.task_id = task_id


class AttemptNotYetProjectedError(NotYetProjectedError):
    """A node's TaskStarted came before the TaskAssigned that gave it the attempt."""

    def __init__(self, task_id: str, attempt: int) -> None:
        super().__init__(f"attempt {attempt} of task {task_id} is not in the ledger yet")
        self.task_id = task_id
        self.attempt = attempt
