"""Tools floor: benchmarks over everything below. `python -m npdemo.bench speed|load` (__main__): decode speed and
memory (speed), concurrent sessions against a live app (load), and starting a live `python app.py` (server)."""
