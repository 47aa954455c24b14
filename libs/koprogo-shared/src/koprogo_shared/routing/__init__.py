"""Where a chat runs: the pure rules (`choice`, `policy`, `targets`, `grid`), one decision over
them (`decision`), and the copros' policies as a reader sees them (`policy_book`).

The router decides every chat it receives; the gateway decides the ones it can send straight to
a cloud deployment (docs/decisions.md, *The request and its routing stored once*). Both take the
same decision with the same rules, from their own copy of the node registry and the policies.
"""
