"""The append-only audit trail: who did what to which record, when and from where.

A small Django app at the bottom of the web layers: ``classifier`` (registry events) and
``cases`` (clinical records) both write to it; it imports neither. An object says which patient
and clinic an event concerns through an ``audit_scope()`` method (see `audit.log.record`).
"""
