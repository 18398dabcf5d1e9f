"""Expert trajectories: training variants (plain MTT, smooth AST), MCT compression (waypoints, convex), the Ray stage."""
