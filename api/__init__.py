"""The integration API (``/api/v1/``): Django REST framework over the clinical services.

Sits above ``cases`` and ``classifier``: it validates with the same forms, writes through the same
services and fetches every object through ``cases.access``, so its rules are the web pages' rules.
"""
