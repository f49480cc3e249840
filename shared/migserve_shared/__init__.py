"""migserve's shared contracts: message schemas, subjects, MIG rules, bus helpers.

This package holds no service logic. Every contract between services is defined
exactly once here: subjects and stream names in ``subjects``, wire messages in
``messages``, MIG placement rules in ``mig``.
"""
