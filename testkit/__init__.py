"""Helpers shared by the tests and the benches, never shipped with nbtrain: real files with planted faults
(`badzoo`), tiny models (`tiny_models`), a child process that applies file changes and is killed
(`fileops_child`), stand-ins for the book's downloads (`fastbook_data`), and a local image server with
planted faults (`image_server`)."""
