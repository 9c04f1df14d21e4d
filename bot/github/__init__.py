"""The GitHub front end: labelled issues and ``/molt`` comments, a webhook with a polling
fallback, and the status of each request back in its issue (the adapter: bot/github/adapter.py)."""
