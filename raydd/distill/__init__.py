"""Trajectory matching (MTT, DATM, AST, MCT): pure math, sampling, and the Ray Train loop."""
