"""Storage: safe checkpoint files, the shipped agents and the shipped recorded episodes."""
from .agents import *  # noqa: F401,F403
from .checkpoint import *  # noqa: F401,F403
from .trajectories import *  # noqa: F401,F403
from . import agents, checkpoint, trajectories

__all__ = agents.__all__ + checkpoint.__all__ + trajectories.__all__
