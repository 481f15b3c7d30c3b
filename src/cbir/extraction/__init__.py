"""Stage 2: images to CNN codes: the backbone registry, the prepared network, engines, precision, the feature file."""
