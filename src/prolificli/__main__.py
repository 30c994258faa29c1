"""`python -m prolificli ...` is `prolific ...` (and what torchrun launches: `torchrun -m prolificli`)."""

from .cli import main

main()
