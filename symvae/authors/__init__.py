"""Everything that runs or compares with the authors' code: their modules imported for one
iteration's figures (reference, crosscheck), whole runs on shared draws (lockstep), and their
scripts run unmodified beside ours (scripts)."""
