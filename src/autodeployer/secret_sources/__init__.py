"""Sources of secret values for ``$SECRET(name)`` references: Vault, a JSON file, the environment.

Every source answers values by name and never lets a value reach an exception, a repr or a log line;
:mod:`.fingerprint` lets the deployer notice a changed value without storing it.
"""

from autodeployer.secret_sources.base import SecretSource, SecretSourceError
from autodeployer.secret_sources.env import EnvSecretSource
from autodeployer.secret_sources.file import FileSecretSource
from autodeployer.secret_sources.fingerprint import Fingerprinter
from autodeployer.secret_sources.vault import VaultSecretSource, VaultSettings

__all__ = [
    "EnvSecretSource",
    "FileSecretSource",
    "Fingerprinter",
    "SecretSource",
    "SecretSourceError",
    "VaultSecretSource",
    "VaultSettings",
]
