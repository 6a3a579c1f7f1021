import os

import torch

# pytest-xdist runs one worker per core: keep each worker's intra-op threads to one so they do not oversubscribe.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Without CUDA the Triton kernels run under the interpreter. Triton reads this when a kernel module is imported, so
# it is set here, before any test module imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
