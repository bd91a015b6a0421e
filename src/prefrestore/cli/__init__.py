"""The ``prefrestore`` command line: argument parsing only, over the library's ``run`` functions.
"""
