"""``python -m autodeployer_emulators.marathon``: serve the Marathon emulator until Ctrl-C."""

from autodeployer_emulators.marathon.app import main

main()
