"""Image-to-video generation: model loading, generation, video encoding.

Knows nothing of folders, sidecars or the database: it takes an image, validated
parameters and a progress callback, and returns frames.
"""
