"""The operator dashboard: server-rendered Django pages with htmx, on the same store.

One module per page family (the overview, nodes, deployments, training jobs, policies,
apply, the event and audit log, accounts), each owning its routes; ``urls`` includes
them. ``owners`` holds what the Deployment and Training job pages share (condition
badges, Workload rows), ``serving`` a Deployment's live serving figures and charts.
The pages read the store directly and change it through the control plane's own
functions (apply, drain, the store), as the API does. See docs/dashboard.md.
"""
