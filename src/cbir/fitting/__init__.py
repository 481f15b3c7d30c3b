"""Stage 3: models fitted on the training features: PCA, intra-class k-means, the MLP, embedding spaces, refits."""
