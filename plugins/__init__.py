"""Flotilla's plugin contract and built-in plugins (pure Python, no Django)."""
