"""mediabind package (see DESIGN.md §2).

Set before anything here imports torch: OpenMP threads (torch's intra-op pool
on a CPU) busy-wait after each parallel region by default. In the pipeline the
encoder shares its cores with the decode threads and their ffmpeg processes, so
that spinning takes CPU the decoders need (``benchmarks/pipeline.py`` prints the
CPU-seconds of both sides). ``PASSIVE`` lets idle threads sleep. A value the user
set wins, and it has no effect if torch was imported before this package.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
