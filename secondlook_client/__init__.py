"""A small Python client for the SecondLook API (``/api/v1/``): only ``requests``, no Django.

    from secondlook_client import SecondLookClient
    client = SecondLookClient("https://secondlook.example.org", token="sl_...")
    client.upload(lesion=12, paths=["lesion-12a.jpg", "lesion-12b.jpg"])
    rows = client.results(case=5, wait=120)

The command line is ``python -m secondlook_client --help``.
"""
from secondlook_client.client import ApiError, SecondLookClient, result_rows

__all__ = ["ApiError", "SecondLookClient", "result_rows"]
