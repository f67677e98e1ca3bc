"""``python -m autodeployer_emulators.github``: serve the GitHub emulator until Ctrl-C."""

from autodeployer_emulators.github.app import main

main()
