import os

import torch

# pytest-xdist runs one worker per core: keep each worker's intra-op threads to one so they do not oversubscribe.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
