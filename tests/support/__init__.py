"""What the tests share, by subject: servers, processes, the app in-process, Redis
subscribers, polling, the outbox, refs, databases, fakes, the book's scenarios.

Test modules and conftest.py files import from here; nothing imports from a
conftest or from another test module.
"""
