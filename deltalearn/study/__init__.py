"""The paper study: its games and settings, the agent at each sparsity, the reproduced tables and
sweeps (run serially, in local processes or on a Dask cluster), their typed results and statistics."""
from .heldout import *  # noqa: F401,F403
from .pruned_agents import *  # noqa: F401,F403
from .results import *  # noqa: F401,F403
from .reproduce import *  # noqa: F401,F403
from .settings import *  # noqa: F401,F403
from .shipped import *  # noqa: F401,F403
from .stats import *  # noqa: F401,F403
from .workers import *  # noqa: F401,F403
from . import bench as _bench_module, heldout, pruned_agents, reproduce, results, settings, shipped, stats, tune as _tune_module, workers

__all__ = (_bench_module.__all__ + heldout.__all__ + pruned_agents.__all__ + results.__all__ + reproduce.__all__
           + settings.__all__ + shipped.__all__ + stats.__all__ + _tune_module.__all__ + workers.__all__)

# last: the functions dl.study.bench and dl.study.tune, not their modules (deltalearn.study.bench stays importable by name)
from .bench import *  # noqa: F401,F403,E402
from .tune import *  # noqa: F401,F403,E402
