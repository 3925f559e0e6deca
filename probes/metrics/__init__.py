"""busmon's counts for Prometheus (``--metrics``): the feed, the exposition, the server."""
