"""The command line (`python -m routing ...`): the local runner, route and dead-letter management.
On top of everything else; nothing imports it but `routing.__main__`.
"""
