"""The bundled game: Gymnasium's CarRacing in a real window, driven like a real game."""

import os

# pygame greets stdout on import; the game's output is logging only.
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
