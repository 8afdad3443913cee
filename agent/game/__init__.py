"""The bundled game: Gymnasium's CarRacing in a real window, driven like a real game."""
