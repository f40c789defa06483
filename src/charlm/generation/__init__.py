"""Continuing a prompt: the next-token strategies, the recurrent fast step, and the decode loop."""
