"""Local fakes of the providers' own APIs (Replicate, fal, RunPod, Leonardo, ComfyUI), written from
their documentation (../shared/PROVIDERS.md), for the tests and the benchmark: real sockets on
127.0.0.1, nothing of HTTP faked. base.py has what they share."""
