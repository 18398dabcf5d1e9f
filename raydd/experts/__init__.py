"""Expert trajectories: training variants (plain MTT, smooth AST, GSAM-trained FTD), MCT convexification, the Ray stage."""
