"""HTTP surface of `autodeployer run`: webhooks, health, metrics, JSON API and status page."""
