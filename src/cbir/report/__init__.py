"""Stage 6: the run's summary: tables, plots, pages, montages and the paper's figures beside ours."""
