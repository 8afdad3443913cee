"""Charles: a live self-driving inference agent for games.

Charles watches a game window, runs a two-head regression CNN (throttle, steering) on each frame
and drives the car through a virtual controller. See README.md for the tour.
"""

__version__ = "0.1.0"
