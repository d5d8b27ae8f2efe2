"""The paper study: its games and settings, the reproduced tables and sweeps, and their statistics."""
from .pruned_agents import *  # noqa: F401,F403
from .settings import *  # noqa: F401,F403
# results before reproduce: until issue 16's transition ends, reproduce's dict-taking summary_row,
# layer_shares and six_game_summary keep their names here; results has the typed ones
from .results import *  # noqa: F401,F403
from .reproduce import *  # noqa: F401,F403
from .stats import *  # noqa: F401,F403
from .workers import *  # noqa: F401,F403
from . import pruned_agents, reproduce, results, settings, stats, workers

__all__ = (pruned_agents.__all__ + settings.__all__ + reproduce.__all__ + stats.__all__ + workers.__all__
           + [n for n in results.__all__ if n not in reproduce.__all__])
