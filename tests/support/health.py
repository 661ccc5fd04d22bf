"""The health token the test settings use, and the request header that presents it."""
HEALTH_TOKEN = "test-health-token"
HEALTH_AUTH = {"HTTP_AUTHORIZATION": f"Bearer {HEALTH_TOKEN}"}  # Django test client kwargs
