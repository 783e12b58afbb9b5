"""Stand-in of Forge's ``backend/`` package (real one: a namespace package). See ../README.md."""
