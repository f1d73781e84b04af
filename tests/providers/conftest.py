"""Tests of each provider's adapter against a local fake of its documented API (bench/fakes): real
sockets, nothing of HTTP mocked."""
