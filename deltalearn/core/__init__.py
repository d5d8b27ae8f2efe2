"""The base floor: networks, and measuring and shrinking what they compute.

``nets`` builds Q-networks, ``counting`` counts their multiplications, ``pruning`` removes
weights, ``delta`` skips unchanged inputs and ``variants`` names which of these run. Nothing
here plays a game or touches a file.
"""
from .chain import *  # noqa: F401,F403
from .counting import *  # noqa: F401,F403
from .delta import *  # noqa: F401,F403
from .nets import *  # noqa: F401,F403
from .pruning import *  # noqa: F401,F403
from .variants import *  # noqa: F401,F403
from . import chain, counting, delta, nets, pruning, variants

__all__ = chain.__all__ + counting.__all__ + delta.__all__ + nets.__all__ + pruning.__all__ + variants.__all__
