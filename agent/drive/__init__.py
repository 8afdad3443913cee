"""One `charles drive` session and what runs in it each tick: the frame-driven loop, the
prediction -> controls mapping, hot swap, unstuck, the game window, hotkeys, the console, the
latency measurement and the end-of-run summary."""
