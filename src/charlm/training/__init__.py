"""The training loop and what it needs: schedule, run folder, resume, distributed ranks, checks, results."""
