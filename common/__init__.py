"""The ground floor: pure-Python modules every other package may import.

The spec models (``specs``), environment helpers (``envhelpers``), the API client
(``client``), free ports (``ports``), time formatting (``timeutil``) and the shared
problem exception (``problems``). Nothing here imports Django, Celery or torch, and no
other Flotilla package except the plugin kind names ``specs`` takes from
``plugins.types``, so agents, plugins, the CLI and the control plane all stand on it
(``tests/test_layering.py`` holds that line).
"""
