"""`python -m prolificli ...` is `prolific ...` (and what torchrun launches: `torchrun -m prolificli`)."""

from prolificli.cli import main

main()
