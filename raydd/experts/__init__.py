"""Expert trajectories: training variants (plain MTT, smooth AST), MCT convexification, the Ray stage."""
