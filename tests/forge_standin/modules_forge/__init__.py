"""``modules_forge``: exists only in Forge (real one: a namespace package, no ``__init__.py``);
``importlib.util.find_spec("modules_forge")`` is how extensions detect Forge."""
