"""First-party dalib method plugins, registered through the ``dalib.methods`` entry points.

Each module registers one method and imports only dalib's public API.
"""
