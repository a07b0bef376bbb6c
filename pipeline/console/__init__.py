"""The operator console: a JSON API for the queue, jobs, dead letters and webhooks, and the page that shows them."""
