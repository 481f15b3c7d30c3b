"""Stage 1: the images: reading one file, inspecting folders, the manifest, the split, the dataset sources."""
