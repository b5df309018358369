"""Flotilla's plugin contract and built-in plugins (pure Python, no Django).

The contract is ``hookspecs`` (the hooks) and ``types`` (the plain data that crosses
them, and the kinds); ``manager`` loads the built-ins, ``FLOTILLA_PLUGIN_MODULES`` and
installed entry points. The built-in schedulers are ``binpack``, ``spread``, ``melange``
and ``distserve``; what the sizing ones share is in ``planning`` and ``mixsolver``, and
the serving simulator they size with is ``sim``. Only ``common`` is imported from outside.
"""
