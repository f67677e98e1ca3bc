"""autodeployer: keep a running platform equal to the configuration kept in Git."""

__version__ = "0.1.0"
