"""Controller backends: one module per way of driving a game, behind one small interface.

`open_controller` (in `factory`) picks the backend named in the config; backends that hold
input in the OS run in a controller process of their own (`host`, `remote`). Windows-only drivers
(pyvjoy, vgamepad) and pynput (which needs a display at import) are imported inside the backend
constructors, so importing this package works everywhere.
"""

from agent.controllers.base import Controller, DeviceController
from agent.controllers.factory import BACKENDS, build_controller, open_controller

__all__ = ["BACKENDS", "Controller", "DeviceController", "build_controller", "open_controller"]
