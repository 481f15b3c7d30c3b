"""Stage 4: searching a fitted cell: the retrieval index, the cell's files, queries, near-duplicates."""
