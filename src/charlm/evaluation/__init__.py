"""Scoring a model on text: exact carried-state passes, side-by-side segments, and the derailment check."""
