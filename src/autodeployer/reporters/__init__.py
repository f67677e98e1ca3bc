"""Reporters: who is told about syncs (commit statuses, notifications, metrics), behind one protocol."""
