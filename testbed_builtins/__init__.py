"""testbed's built-in components (installed as ``testbed_builtins``).

Each module implements testbed's hooks exactly as a third-party plugin package would.
"""
