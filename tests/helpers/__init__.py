"""Test helpers shared by several test modules (servers and fixtures that take a while to start)."""
