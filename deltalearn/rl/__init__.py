"""The reinforcement-learning machinery: environments, replay memory, Double DQN, evaluation
and pruning by distillation."""
from .buffer import *  # noqa: F401,F403
from .distill import *  # noqa: F401,F403
from .dqn import *  # noqa: F401,F403
from .envs import *  # noqa: F401,F403
from .evaluation import *  # noqa: F401,F403
from .ship import *  # noqa: F401,F403
from . import buffer, distill, dqn, envs, evaluation, ship

__all__ = buffer.__all__ + distill.__all__ + dqn.__all__ + envs.__all__ + evaluation.__all__ + ship.__all__
