"""Geometry: post-optimization, synthetic scenes, point clouds, exports and rendering."""
