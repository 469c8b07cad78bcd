"""The ``appliance`` command line: thin click wrappers over the library packages."""
