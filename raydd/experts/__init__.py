"""Expert trajectories: training variants (plain MTT, smooth AST, GSAM-trained FTD), MCT compression (waypoints, convex), the Ray stage."""
