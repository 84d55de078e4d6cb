"""How the serving process shares its cores.

torch's intra-op threads run the networks on every core. numpy, SciPy and OpenCV each bring an OpenBLAS with a
pool of its own as large as the machine; the small matrices the app hands them (EigenCAM's SVD of a 49 x 768
activation, the feature scores' products) gain nothing from a second thread, and that pool's threads spin against
torch's: measured on 2 cores, EigenCAM's SVD took 6.7 ms on two OpenBLAS threads and 13 ms right after a torch
forward, against 1.7 and 2.6 ms on one. torch's own BLAS (MKL, linked into torch) is not among them.
"""

from __future__ import annotations

import logging

import torch
from threadpoolctl import threadpool_info, threadpool_limits

log = logging.getLogger(__name__)


def share_cores() -> list[str]:
    """Limit every OpenBLAS (or other BLAS) the process has loaded to one thread, for the rest of the process;
    torch keeps its threads. Returns the libraries limited. Call it after the imports that load them."""
    limited = [info["filepath"] for info in threadpool_info() if info["user_api"] == "blas"]
    threadpool_limits(limits=1, user_api="blas")
    if limited:
        log.info("numpy's, SciPy's and OpenCV's BLAS on one thread (%d libraries); torch keeps %d threads",
                 len(limited), torch.get_num_threads())
    return limited
