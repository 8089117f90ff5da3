"""Serving floor: the engine every client uses (engine, session), generation for many visitors (streaming,
batching), and what the page shows (views, ui)."""
