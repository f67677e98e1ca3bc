"""Safe rollout: policies an app declares about how a revision reaches its target (health, rollback)."""
