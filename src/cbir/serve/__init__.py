"""`cbir serve`: the web app over a fitted cell or an indexed collection."""
