"""What runs in a drive each tick: the frame-driven loop, the prediction -> controls mapping,
hot swap, unstuck, the game window, hotkeys, the console, the latency measurement and the
end-of-run summary (agent/session.py wires them into one `charles drive` session)."""
