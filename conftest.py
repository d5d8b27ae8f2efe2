"""pytest options for every run, the unit tests (tests/) and the chapters (book/, under nbval).

This file sits at the repository root so that ``python -m pytest book/08_reproduction.ipynb
--onednn=off`` knows the option too (pytest reads ``tests/conftest.py`` only for paths under
``tests/``).

``--onednn=off`` runs with torch's oneDNN kernels switched off: it sets ``DELTALEARN_ONEDNN=0``
before any notebook kernel starts (kernels are child processes, they inherit the environment,
and ``import deltalearn`` honours the variable) and switches oneDNN off in this process too.
``--onednn=on`` forces torch's default; without the option ``DELTALEARN_ONEDNN`` is left as it
is. Counts that pass through float sums move by float round-off between the two; the checks
allow for it (``dl.core.COUNT_RTOL``).
"""
from __future__ import annotations

import os


def pytest_addoption(parser):
    parser.addoption("--onednn", choices=("on", "off"), default=None,
                     help="run tests and notebook kernels with torch's oneDNN kernels on or off "
                          "(sets DELTALEARN_ONEDNN; default: leave it as it is)")


def pytest_configure(config):
    choice = config.getoption("onednn")
    if choice is not None:
        os.environ["DELTALEARN_ONEDNN"] = "1" if choice == "on" else "0"
        import torch

        torch.backends.mkldnn.enabled = choice == "on"
    import deltalearn  # noqa: F401  (honours DELTALEARN_ONEDNN in this process as well)


def pytest_report_header(config):
    import torch

    return (f"oneDNN: {'on' if torch.backends.mkldnn.enabled else 'off'} "
            f"(DELTALEARN_ONEDNN={os.environ.get('DELTALEARN_ONEDNN', 'unset')})")
