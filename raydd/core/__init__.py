"""Primitives several stages share: image types and model space, ZCA, DSA, training on a set, k-means,
MCT trajectory compression (waypoints, convex)."""
