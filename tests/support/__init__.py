"""Plain helpers the tests share (image generators, a world of clinics and users, browser log-in)."""
