"""``python -m autodeployer_emulators.sesam``: serve the Sesam emulator until Ctrl-C."""

from autodeployer_emulators.sesam.app import main

raise SystemExit(main())
