"""What the tests share, by subject: servers, processes, polling, the outbox, refs, databases.

Test modules and conftest.py files import from here; nothing imports from a conftest.
"""
