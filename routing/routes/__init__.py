"""The route table: endpoints, their filters and templates, validation, and where a table comes from
(a routes file, or Azure Table Storage). Everything but the stores is pure.
"""
