"""`python -m testbed` (and `torchrun -m testbed`) enters the same CLI as `testbed`."""

from testbed.cli import main

main()
