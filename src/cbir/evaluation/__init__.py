"""Stage 5: the test split's queries, scored: accuracy, precision, mAP, recall and latency."""
