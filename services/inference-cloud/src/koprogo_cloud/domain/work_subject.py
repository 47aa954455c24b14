"""Whether a work item's subject and body agree on its copro: a pure rule.

Cloud work travels on `koprogo.work.cloud.<copro>.<deployment>` (`subjects.run_inference_cloud`).
The hub's routers may publish any copro's; a building's leaf user only its own copro's
(`leaf_site.leaf_link_permissions`). The body's `copro_id` is what the answer, the ledger's
figures and the copro's bill are filed under, so an item whose body names another copro than its
subject (a building naming another copro in the body) is refused before the provider is paid.
"""

from __future__ import annotations

from koprogo_shared import subjects
from koprogo_shared.events import RunInference


def copro_mismatch(subject: str, work: RunInference) -> str | None:
    """Why the item must not run (its subject's copro is not its body's), else None."""
    token = subjects.cloud_work_copro(subject)
    expected = subjects.subject_token(work.copro_id)
    if token == expected:
        return None
    return f"work on {subject} names copro {work.copro_id!r} in its body: refused (subject and body disagree)"
