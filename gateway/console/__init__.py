"""The operator console: pages in the browser over the one HTTP server (gateway.http).

`routes.add_routes(app, ctx)` mounts the pages (static/), their JSON API and /metrics;
`queries` holds the bounded reads behind the API, `history` the overview's last hour.
docs/console.md is the reference.
"""
