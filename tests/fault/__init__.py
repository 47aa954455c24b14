"""Fault injection on the chat path: services killed under load (issue 12)."""
