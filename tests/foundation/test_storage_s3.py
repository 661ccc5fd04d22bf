"""Uploaded files can live on S3-compatible storage (tested against moto's server mode)."""
import os
import subprocess
import sys

import boto3
from django.core.files.base import ContentFile
from django.core.files.storage import storages



def test_media_storage_on_s3(settings, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="secondlook-test")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "secondlook-test", "endpoint_url": s3_endpoint, "region_name": "us-east-1",
                        "default_acl": "private", "file_overwrite": False, "location": "media"},
        },
    }
    storage = storages["default"]
    name = storage.save("images/a.png", ContentFile(b"\x89PNG fake bytes"))
    assert storage.exists(name)
    with storage.open(name) as handle:
        assert handle.read() == b"\x89PNG fake bytes"
    # Stored under the configured prefix.
    listed = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").list_objects_v2(
        Bucket="secondlook-test")
    assert [o["Key"] for o in listed["Contents"]] == [f"media/{name}"]
    storage.delete(name)
    assert not storage.exists(name)


def test_configured_bucket_keeps_objects_private(s3_endpoint):
    """The settings' own S3 configuration (S3_BUCKET=...): stored objects carry no public grant and
    the only URLs handed out are short-lived signed ones."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket="secondlook-private")
    env = dict(os.environ, **creds, S3_BUCKET="secondlook-private", S3_ENDPOINT_URL=s3_endpoint)
    code = ("from django.core.files.base import ContentFile; from django.core.files.storage import default_storage as s; "
            "n = s.save('images/p.png', ContentFile(b'pixels')); print(n); print(s.url(n))")
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=root, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    name, url = out.stdout.strip().splitlines()[-2:]
    grants = client.get_object_acl(Bucket="secondlook-private", Key=f"media/{name}")["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]
    assert all("URI" not in g["Grantee"] for g in grants)  # no AllUsers / AuthenticatedUsers group grant
    query = url.partition("?")[2]
    assert "Signature=" in query and "Expires=" in query, url  # signed, time-limited (SigV2 or SigV4)
