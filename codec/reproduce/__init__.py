"""`codec reproduce`: the reports' phases trained at real length, and the lab's outcome beside theirs.

    phases.py   what the reports observed per phase (docs/failure-modes.md)
    runner.py   several `codec fit` processes side by side, threads split between them
    report.py   reproduce.md and its figures, from the run directories
    command.py  the command line
"""
