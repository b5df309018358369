"""The ground floor: pure-Python modules every other package may import.

The spec models (``specs``), environment helpers, the API client, free ports, time
formatting and the shared problem exception. Nothing here imports Django, Celery,
torch, or any other Flotilla package, so agents, plugins, the CLI and the control
plane all stand on it.
"""
