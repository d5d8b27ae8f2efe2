"""The base floor: networks, and measuring and shrinking what they compute.

``nets`` builds Q-networks, ``counting`` counts their multiplications, ``pruning`` removes
weights and ``delta`` skips unchanged inputs. Nothing here plays a game or touches a file.
"""
from .counting import *  # noqa: F401,F403
from .delta import *  # noqa: F401,F403
from .nets import *  # noqa: F401,F403
from .pruning import *  # noqa: F401,F403
from . import counting, delta, nets, pruning

__all__ = counting.__all__ + delta.__all__ + nets.__all__ + pruning.__all__
